package tunnel

// The exit's side of a session, once the acceptor has made it: accept its
// streams within the session's limits, hand each to the forwarder, and
// refuse streams with a status, draining what the entry still sends into
// them. One exitSession per session, joining the acceptor's result to the
// forwarder; what one accepted stream becomes is in incoming.go.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// exitSession serves the streams of one session. serve runs once; the
// stream goroutines it starts call refuse and end.
type exitSession struct {
	sess       *session.Session
	peer       streamPeer
	log        zerolog.Logger // with the peer's address and fingerprint
	fwd        *forwarder     // serves each accepted stream
	maxStreams int
	streams    *openStreams // the exit's, for the drain

	// active counts the streams being served, against maxStreams; refused
	// those refused and not yet closed by the peer, against maxRefused.
	active, refused, refusedTotal atomic.Int64
	overRefused                   sync.Once
	running                       sync.WaitGroup // every stream goroutine of the session
	// drainsEnded ends the drains of refused streams when the session ends
	// (endDrains): a yamux stream blocked in Read spins while its session
	// shuts down, until Close gets to it, and hundreds of them starve the
	// shutdown.
	drainsEnded context.Context
	endDrains   context.CancelFunc
}

// newExitSession returns the server of in's streams, which fwd serves,
// at most maxStreams at a time, each counted in streams while served.
func newExitSession(in *established, fwd *forwarder, maxStreams int, streams *openStreams) *exitSession {
	s := &exitSession{sess: in.sess, peer: in.peer, log: in.log, fwd: fwd, maxStreams: maxStreams, streams: streams}
	s.drainsEnded, s.endDrains = context.WithCancel(context.Background())
	return s
}

// serve accepts and serves the session's streams until it ends, then logs
// its end. It stops taking new streams when ctx ends (drain), and closes
// the session at hard.
func (s *exitSession) serve(ctx, hard context.Context) {
	sess, log := s.sess, s.log
	start := time.Now()
	stopGoAway := context.AfterFunc(ctx, func() { sess.GoAway() })
	defer stopGoAway()
	stopHard := context.AfterFunc(hard, func() { sess.Close() })
	defer stopHard()
	defer s.endDrains()

	var total int64
	busyLogged := false
	for {
		st, err := sess.Accept()
		if err != nil {
			break
		}
		total++
		s.running.Add(1)
		if s.active.Add(1) > int64(s.maxStreams) {
			s.active.Add(-1)
			if !busyLogged {
				busyLogged = true
				log.Warn().Uint32("stream", st.ID()).Int("max_streams", s.maxStreams).
					Msg("stream refused: session is at its stream limit (further refusals are counted in the session's closing line)")
			}
			s.fwd.books.Refused(s.fwd.noService, statusLabel(StatusBusy))
			go func() {
				defer s.running.Done()
				defer st.Close()
				s.refuse(st, StatusBusy, fmt.Sprintf("exit is at its limit of %d streams per session", s.maxStreams))
			}()
			continue
		}
		s.streams.Add(1)
		s.fwd.books.StreamOpened()
		go s.fwd.serveStream(hard, log, st, s.peer, func(status Status, msg string) { s.end(st, status, msg) })
	}
	<-sess.Done()
	s.endDrains()
	s.running.Wait()
	reason, clean := sess.End()
	ev := log.Info()
	if !clean {
		ev = log.Warn() // truncation, a failed record, a reset, a keepalive timeout, a flood
	}
	ev.Err(reason).Int64("streams", total).Int64("streams_refused", s.refusedTotal.Load()).
		Str("duration", logfield.Duration(time.Since(start))).Msg("session closed")
}

// end is called once the forwarder is done with st, an accepted stream:
// with a status other than StatusOK, st is refused (and drained) here.
func (s *exitSession) end(st *session.Stream, status Status, msg string) {
	defer s.running.Done()
	defer st.Close()
	// A refused stream no longer counts as served, nor holds up a drain.
	s.active.Add(-1)
	s.fwd.books.StreamClosed()
	s.streams.Done()
	if status != StatusOK {
		s.refuse(st, status, msg)
	}
}

// refuse answers a non-zero status on st and drains it until the peer
// closes it; a peer that keeps more than maxRefused refused streams open
// loses its session.
func (s *exitSession) refuse(st *session.Stream, status Status, msg string) {
	s.refusedTotal.Add(1)
	defer s.refused.Add(-1)
	if s.refused.Add(1) > maxRefused {
		s.overRefused.Do(func() {
			s.log.Warn().Int("max_refused", maxRefused).
				Msg("closing the session: the peer keeps too many refused streams open")
		})
		s.endDrains()
		s.sess.Close()
		return
	}
	drainRefused(s.drainsEnded, st, status, msg)
}

// streamPeer is what the exit knows of the entry that opened a stream.
type streamPeer struct {
	fingerprint string
	access      access // the rules in force when the stream began (serveStream)
}

// logRefusal logs that a stream is refused with s and msg, for err.
func logRefusal(log zerolog.Logger, s Status, msg string, err error) {
	log.Warn().Int("status", int(s)).Str("status_text", s.String()).AnErr("reason", err).Msg(msg)
}

// maxRefused bounds the refused streams of one session that are still open
// (the peer has not closed them); past it the session is closed. Our entry
// closes a refused stream at once. Each costs a goroutine, and what the peer
// sends into it is discarded, but yamux takes up to one initial window
// (256 KiB) per stream into memory before it is read: 64 MiB at most.
const maxRefused = 256

// drainRefused answers a non-zero status and closes this side of st, then
// reads and discards until the peer closes its side or ctx ends, so that a
// peer writing into a refused stream makes the exit buffer nothing.
func drainRefused(ctx context.Context, st *session.Stream, s Status, msg string) {
	stop := context.AfterFunc(ctx, func() { st.SetReadDeadline(time.Now()) })
	defer stop()
	st.SetWriteDeadline(time.Now().Add(time.Second))
	st.Write(marshalStatus(s, msg))
	st.CloseWrite()
	buf := make([]byte, 16<<10)
	for {
		_, err := st.Read(buf)
		st.Shrink() // keep no buffer for what is discarded
		if err != nil {
			return
		}
	}
}
