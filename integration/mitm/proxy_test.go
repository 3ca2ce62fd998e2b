package mitm

// The man in the middle. For each connection the entry makes to it, the
// proxy dials the exit and runs one goroutine per direction:
//
//	entry --i2r--> [parse -> policy -> actions] --> exit
//	entry <--r2i-- [parse -> policy -> actions] <-- exit
//
// Each goroutine parses what the agent sent into units (the preface, a
// handshake message, a record, or raw bytes once the framing is lost) and
// asks the test's policy what to do with each: forward it (changed or not),
// send it back to its sender, send garbage, or cut the connection. The
// policy decides under the proxy's lock and does no I/O; the goroutine then
// carries out the actions. When an agent closes its side, the proxy passes
// that on to the other agent as it came: FIN as FIN, reset as reset.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Wire constants of PROTOCOL.md, written out here so that the proxy does not
// depend on the code it attacks.
const (
	prefaceLen   = 8
	msgHeaderLen = 4
	maxMsgBody   = 8192

	msgHelloI byte = 0x01
	msgHelloR byte = 0x02
	msgKeyI   byte = 0x03
	msgAlert  byte = 0x15

	recHeaderLen = 4
	ivLen        = 16
	tagLen       = 32
	minRecLen    = ivLen + 1 + tagLen     // 49
	maxRecLen    = ivLen + 65536 + tagLen // 65584
)

// side is one end of a proxied connection.
type side int

const (
	entrySide side = iota // the connection the entry dialed to the proxy
	exitSide              // the connection the proxy dialed to the exit
)

func (s side) String() string { return [...]string{"entry", "exit"}[s] }

// dir is a direction of traffic.
type dir int

const (
	i2r dir = iota // entry (initiator) to exit (responder)
	r2i            // exit to entry
)

func (d dir) String() string { return [...]string{"i2r", "r2i"}[d] }

// src is the side a direction reads from, dst the side it writes to.
func (d dir) src() side { return side(d) }
func (d dir) dst() side { return side(1 - d) }

// kind classifies a unit.
type kind int

const (
	kindPreface kind = iota
	kindHelloI
	kindHelloR
	kindKeyI
	kindAlert
	kindOtherMsg // a handshake message of another type
	kindRecord
	kindRaw // bytes after the framing was lost (an ALERT, a bad length)
)

func (k kind) String() string {
	return [...]string{"preface", "HELLO_I", "HELLO_R", "KEY_I", "ALERT", "message", "record", "raw"}[k]
}

func msgKind(typ byte) kind {
	switch typ {
	case msgHelloI:
		return kindHelloI
	case msgHelloR:
		return kindHelloR
	case msgKeyI:
		return kindKeyI
	case msgAlert:
		return kindAlert
	}
	return kindOtherMsg
}

// unit is one parsed piece of a direction's byte stream, as the agent sent
// it. The policy owns b: it may change it in place and forward it.
type unit struct {
	conn int  // index of the proxied connection, from 0
	dir  dir  // direction
	kind kind // what it is
	seq  int  // records: index in its direction (0 is FINISHED); otherwise -1
	b    []byte
}

// op is what an action does.
type op int

const (
	opForward op = iota // write b onward, to the unit's destination
	opReflect           // write b back to the unit's sender
	opGarbage           // write n pseudo-random bytes onward
	opCutFIN            // half-close both agents' connections and discard the rest
	opCutRST            // reset both agents' connections
)

type action struct {
	op op
	b  []byte
	n  int64
}

func forward(bs ...[]byte) []action {
	acts := make([]action, len(bs))
	for i, b := range bs {
		acts[i] = action{op: opForward, b: b}
	}
	return acts
}

func reflectAct(b []byte) action { return action{op: opReflect, b: b} }
func garbage(n int64) action     { return action{op: opGarbage, n: n} }

// policy decides what happens to a unit. The proxy calls it under its lock,
// one unit at a time, so a policy may keep state without locking; it must
// not block.
type policy func(u *unit) []action

// passThrough forwards every unit unchanged.
func passThrough(u *unit) []action { return forward(u.b) }

// proxy is a man in the middle listening on 127.0.0.1.
type proxy struct {
	ln     net.Listener
	target string
	// keepExitOpen: do not pass the entry's end on to the exit, so that the
	// exit's own handshake timeout is what ends the connection.
	keepExitOpen bool

	mu     sync.Mutex // guards pol, pipes and closed; never held during I/O
	pol    policy
	pipes  []*pipe
	added  chan struct{} // closed and replaced when a pipe is added
	closed bool

	wg sync.WaitGroup
}

// startProxy listens on 127.0.0.1:0 and proxies every connection to target
// under pol (see proxy.keepExitOpen). t.Cleanup closes the proxy and waits
// for its goroutines.
func startProxy(t testing.TB, target string, pol policy, keepExitOpen bool) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &proxy{ln: ln, target: target, pol: pol, keepExitOpen: keepExitOpen, added: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// setPolicy replaces the policy; units parsed from now on follow it.
func (p *proxy) setPolicy(pol policy) {
	p.mu.Lock()
	p.pol = pol
	p.mu.Unlock()
}

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for _, pp := range p.pipes {
		for _, c := range pp.conns {
			c.SetLinger(0)
			c.Close()
		}
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			continue
		}
		pp := &pipe{conns: [2]*net.TCPConn{c.(*net.TCPConn), up.(*net.TCPConn)}}
		pp.exitLocal = up.LocalAddr().String()
		for s := range pp.ended {
			pp.ended[s] = make(chan struct{})
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			for _, c := range pp.conns {
				c.SetLinger(0)
				c.Close()
			}
			return
		}
		pp.idx = len(p.pipes)
		p.pipes = append(p.pipes, pp)
		close(p.added)
		p.added = make(chan struct{})
		p.mu.Unlock()

		p.wg.Add(2)
		var both sync.WaitGroup
		both.Add(2)
		for _, d := range []dir{i2r, r2i} {
			go func() {
				defer p.wg.Done()
				defer both.Done()
				p.run(pp, d)
			}()
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			both.Wait()
			pp.conns[entrySide].Close()
			pp.conns[exitSide].Close()
		}()
	}
}

// pipe waits up to timeout for the i-th proxied connection.
func (p *proxy) pipe(t testing.TB, i int, timeout time.Duration) *pipe {
	t.Helper()
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		n, added := len(p.pipes), p.added
		var pp *pipe
		if i < n {
			pp = p.pipes[i]
		}
		p.mu.Unlock()
		if pp != nil {
			return pp
		}
		select {
		case <-added:
		case <-deadline:
			t.Fatalf("proxy: connection %d from the entry did not come within %v (%d so far)", i, timeout, n)
		}
	}
}

// pipe is one proxied connection.
type pipe struct {
	idx       int
	conns     [2]*net.TCPConn // by side
	wmu       [2]sync.Mutex   // serialises writes to conns[side], unit by unit
	exitLocal string          // the proxy's address as the exit sees it: "peer" in the exit's logs

	ended  [2]chan struct{} // closed when reading from conns[side] has ended
	endErr [2]error         // why; set before ended is closed
	endAt  [2]time.Time

	cut atomic.Bool // the proxy cut the connection: discard everything, propagate nothing
}

// waitEnded waits up to timeout for the agent on side s to close its
// connection (reading from it ended) and returns when and why.
func (pp *pipe) waitEnded(t testing.TB, s side, timeout time.Duration) (time.Time, error) {
	t.Helper()
	select {
	case <-pp.ended[s]:
		return pp.endAt[s], pp.endErr[s]
	case <-time.After(timeout):
		t.Fatalf("proxy connection %d: the %s agent did not close its connection within %v", pp.idx, s, timeout)
		return time.Time{}, nil
	}
}

// run carries direction d of pp until its source ends.
func (p *proxy) run(pp *pipe, d dir) {
	src := pp.conns[d.src()]
	err := parseStream(bufio.NewReaderSize(src, 128<<10), d, func(k kind, seq int, b []byte) {
		if pp.cut.Load() {
			return
		}
		u := &unit{conn: pp.idx, dir: d, kind: k, seq: seq, b: b}
		p.mu.Lock()
		acts := p.pol(u)
		p.mu.Unlock()
		pp.do(d, acts)
	})
	pp.endErr[d.src()] = err
	pp.endAt[d.src()] = time.Now()
	close(pp.ended[d.src()])
	if pp.cut.Load() || (d == i2r && p.keepExitOpen) {
		return
	}
	dst := pp.conns[d.dst()]
	if errors.Is(err, io.EOF) {
		dst.CloseWrite() // FIN as FIN
	} else {
		dst.SetLinger(0) // reset as reset
		dst.Close()
	}
}

// do carries out a policy's actions for a unit travelling in direction d.
// Write errors are ignored: the failing side's reader sees the end too.
func (pp *pipe) do(d dir, acts []action) {
	for _, a := range acts {
		switch a.op {
		case opForward:
			pp.write(d.dst(), a.b)
		case opReflect:
			pp.write(d.src(), a.b)
		case opGarbage:
			pp.writeGarbage(d.dst(), a.n)
		case opCutFIN, opCutRST:
			pp.cutConns(a.op == opCutRST)
		}
	}
}

func (pp *pipe) write(s side, b []byte) error {
	pp.wmu[s].Lock()
	defer pp.wmu[s].Unlock()
	_, err := pp.conns[s].Write(b)
	return err
}

func (pp *pipe) writeGarbage(s side, n int64) {
	pp.wmu[s].Lock()
	defer pp.wmu[s].Unlock()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + i>>8)
	}
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := pp.conns[s].Write(buf[:k]); err != nil {
			return
		}
		n -= k
	}
}

// cutConns ends both agents' connections: with rst, by a reset
// (SO_LINGER 0); otherwise by FIN in both directions, after which the proxy
// reads and discards what the agents still send, so that no unread data
// turns its FIN into a reset.
func (pp *pipe) cutConns(rst bool) {
	pp.cut.Store(true)
	for _, c := range pp.conns {
		if rst {
			c.SetLinger(0)
			c.Close()
		} else {
			c.CloseWrite()
		}
	}
}

// errFraming: what an agent sent does not parse; the rest is raw bytes.
var errFraming = errors.New("framing lost")

// parseStream splits direction d of a connection into units and passes
// each to emit, in order, until the stream ends; it returns the read error
// that ended it (io.EOF for a clean end).
//
// i2r carries the preface, HELLO_I, KEY_I (or an ALERT), then records; r2i
// carries HELLO_R (or an ALERT), then records, of which the first may
// instead be an ALERT rejecting KEY_I. After an ALERT or a record length out
// of range the rest is passed on as raw bytes.
func parseStream(r *bufio.Reader, d dir, emit func(k kind, seq int, b []byte)) error {
	readN := func(n int) ([]byte, error) {
		b := make([]byte, n)
		k, err := io.ReadFull(r, b)
		if err == io.ErrUnexpectedEOF {
			emit(kindRaw, -1, b[:k]) // an agent's last, partial bytes
			err = io.EOF
		}
		return b, err
	}
	readMsg := func() ([]byte, error) {
		hdr, err := r.Peek(msgHeaderLen)
		if err != nil {
			return nil, flushPartial(r, emit, err)
		}
		n := int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
		if n > maxMsgBody {
			return nil, errFraming
		}
		return readN(msgHeaderLen + n)
	}

	err := func() error {
		if d == i2r {
			b, err := readN(prefaceLen)
			if err != nil {
				return err
			}
			emit(kindPreface, -1, b)
			for {
				m, err := readMsg()
				if err != nil {
					return err
				}
				emit(msgKind(m[0]), -1, m)
				switch m[0] {
				case msgKeyI:
					return nil // records follow
				case msgAlert:
					return errFraming
				}
			}
		}
		m, err := readMsg()
		if err != nil {
			return err
		}
		emit(msgKind(m[0]), -1, m)
		if m[0] != msgHelloR {
			return errFraming
		}
		first, err := r.Peek(1)
		if err != nil {
			return err
		}
		if first[0] == msgAlert {
			if m, err = readMsg(); err != nil {
				return err
			}
			emit(kindAlert, -1, m)
			return errFraming
		}
		return nil
	}()

	for seq := 0; err == nil; seq++ {
		var hdr []byte
		if hdr, err = r.Peek(recHeaderLen); err != nil {
			return flushPartial(r, emit, err)
		}
		n := int(binary.BigEndian.Uint32(hdr))
		if n < minRecLen || n > maxRecLen {
			err = errFraming
			break
		}
		var b []byte
		if b, err = readN(recHeaderLen + n); err == nil {
			emit(kindRecord, seq, b)
		}
	}
	if err != errFraming {
		return err
	}
	for {
		buf := make([]byte, 32<<10)
		n, err := r.Read(buf)
		if n > 0 {
			emit(kindRaw, -1, buf[:n])
		}
		if err != nil {
			return err
		}
	}
}

// flushPartial passes on the bytes buffered before a failed Peek and
// returns err.
func flushPartial(r *bufio.Reader, emit func(kind, int, []byte), err error) error {
	if n := r.Buffered(); n > 0 {
		b := make([]byte, n)
		io.ReadFull(r, b)
		emit(kindRaw, -1, b)
	}
	return err
}

// Policies.

// tamperFirst applies f to the first unit of connection 0 that match
// accepts, and forwards every other unit unchanged. fired, if not nil, is
// closed when f has run.
func tamperFirst(match func(*unit) bool, f func(*unit) []action, fired chan<- struct{}) policy {
	done := false
	return func(u *unit) []action {
		if done || u.conn != 0 || !match(u) {
			return forward(u.b)
		}
		done = true
		acts := f(u)
		if fired != nil {
			close(fired)
		}
		return acts
	}
}

// tamperAll applies f to every unit of every connection that match accepts:
// every attempt of the entry meets the same attacker.
func tamperAll(match func(*unit) bool, f func(*unit) []action) policy {
	return func(u *unit) []action {
		if !match(u) {
			return forward(u.b)
		}
		return f(u)
	}
}

// is matches units of kind k in direction d.
func is(d dir, k kind) func(*unit) bool {
	return func(u *unit) bool { return u.dir == d && u.kind == k }
}

// dataRecord matches records in direction d that carry application data:
// bigger than any yamux control frame (a 12-byte header in a 65-byte record).
func dataRecord(d dir) func(*unit) bool {
	return func(u *unit) bool { return u.dir == d && u.kind == kindRecord && len(u.b) > 1000 }
}

// flip returns a tamper that flips bit (0..7) of byte off of the unit.
func flip(off, bit int) func(*unit) []action {
	return func(u *unit) []action {
		u.b[off] ^= 1 << bit
		return forward(u.b)
	}
}

// String names a unit for logs.
func (u *unit) String() string {
	s := fmt.Sprintf("conn %d %v %v (%d bytes)", u.conn, u.dir, u.kind, len(u.b))
	if u.kind == kindRecord {
		s += fmt.Sprintf(" seq %d", u.seq)
	}
	return s
}
