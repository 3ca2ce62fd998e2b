package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/frame"
)

// yamux frame header: version u8 | type u8 | flags u16 | stream u32 | length u32.
const (
	yamuxHeaderLen = 12
	yamuxTypeData  = 0
	yamuxTypePing  = 2
	yamuxFlagSYN   = 1
)

// Ping limits: yamux answers every ping with a new goroutine, so a peer's
// ping flood would cost unbounded goroutines. Keepalives need one ping per
// interval; a peer sending more than pingBurst beyond pingRate per second
// is cut off.
const (
	pingRate  = 20
	pingBurst = 100
)

var errPingFlood = errors.New("tunnel: peer sent pings faster than the limit (ping flood); session closed")

// copyBufSize makes one application read one yamux frame and one record:
// the frame's header and body fill a record's payload exactly.
const copyBufSize = frame.MaxPayload - yamuxHeaderLen

// muxConn sits between yamux and a frame.Conn. yamux writes each frame as
// two Writes, header then body; muxConn holds a data frame's header until
// its body arrives and seals both into one record, so that a frame costs
// one record rather than two. Other frames (window updates, pings, go away)
// have no body and pass at once. Write is called by yamux's single send
// loop; mu makes it safe regardless.
//
// On the read side muxConn follows yamux's framing too, to count the
// peer's pings (see pingRate).
type muxConn struct {
	*frame.Conn

	mu       sync.Mutex
	hdr      [yamuxHeaderLen]byte
	have     int // bytes of hdr collected
	bodyLeft int // bytes of the current data frame's body still to come

	in frameScanner // read side; yamux reads from one goroutine
}

// Read passes the peer's bytes to yamux, watching for a ping flood.
func (m *muxConn) Read(p []byte) (int, error) {
	n, err := m.Conn.Read(p)
	if n > 0 {
		if ferr := m.in.scan(p[:n], time.Now()); ferr != nil {
			m.Conn.Close()
			return 0, ferr
		}
	}
	return n, err
}

// frameScanner follows yamux frame boundaries in a byte stream and keeps a
// token bucket for ping requests.
type frameScanner struct {
	hdr      [yamuxHeaderLen]byte
	have     int
	bodyLeft int

	tokens float64
	last   time.Time
}

func (s *frameScanner) scan(p []byte, now time.Time) error {
	for len(p) > 0 {
		if s.bodyLeft > 0 {
			n := min(len(p), s.bodyLeft)
			s.bodyLeft -= n
			p = p[n:]
			continue
		}
		k := copy(s.hdr[s.have:], p)
		s.have += k
		p = p[k:]
		if s.have < yamuxHeaderLen {
			return nil
		}
		s.have = 0
		length := int(binary.BigEndian.Uint32(s.hdr[8:]))
		switch s.hdr[1] {
		case yamuxTypeData:
			s.bodyLeft = length
		case yamuxTypePing:
			if binary.BigEndian.Uint16(s.hdr[2:])&yamuxFlagSYN != 0 && !s.takePing(now) {
				return errPingFlood
			}
		}
	}
	return nil
}

func (s *frameScanner) takePing(now time.Time) bool {
	if s.last.IsZero() {
		s.tokens, s.last = pingBurst, now
	}
	s.tokens = min(pingBurst, s.tokens+now.Sub(s.last).Seconds()*pingRate)
	s.last = now
	if s.tokens < 1 {
		return false
	}
	s.tokens--
	return true
}

func (m *muxConn) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	total := len(p)
	for len(p) > 0 {
		if m.bodyLeft > 0 {
			n := min(len(p), m.bodyLeft)
			var err error
			if m.have > 0 {
				_, err = m.Conn.WriteBuffers(m.hdr[:m.have], p[:n])
				m.have = 0
			} else {
				_, err = m.Conn.Write(p[:n])
			}
			if err != nil {
				return total - len(p), err
			}
			m.bodyLeft -= n
			p = p[n:]
			continue
		}
		k := copy(m.hdr[m.have:], p)
		m.have += k
		p = p[k:]
		if m.have < yamuxHeaderLen {
			break
		}
		if length := int(binary.BigEndian.Uint32(m.hdr[8:])); m.hdr[1] == yamuxTypeData && length > 0 {
			m.bodyLeft = length // hold the header for its body
			continue
		}
		m.have = 0
		if _, err := m.Conn.Write(m.hdr[:]); err != nil {
			return total - len(p), err
		}
	}
	return total, nil
}

// muxSettings are the yamux knobs an agent exposes.
type muxSettings struct {
	keepAlive time.Duration
	window    uint32
}

func (s muxSettings) config(log zerolog.Logger) *yamux.Config {
	c := yamux.DefaultConfig()
	c.KeepAliveInterval = s.keepAlive
	c.MaxStreamWindowSize = s.window
	c.ConnectionWriteTimeout = 10 * time.Second
	c.StreamOpenTimeout = 10 * time.Second
	c.LogOutput = nil
	c.Logger = yamuxLogger{log}
	return c
}

// yamuxLogger sends yamux's own messages to the debug log.
type yamuxLogger struct{ log zerolog.Logger }

func (l yamuxLogger) Print(v ...any)                 { l.log.Debug().Msg(fmt.Sprint(v...)) }
func (l yamuxLogger) Printf(format string, v ...any) { l.log.Debug().Msgf(format, v...) }
func (l yamuxLogger) Println(v ...any)               { l.log.Debug().Msg(fmt.Sprint(v...)) }
