package pressure

import (
	"context"
	"crypto/ecdh"
	"crypto/mlkem"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

const mib = 1 << 20

// rig is a running exit agent with its status endpoint, in front of a
// backend, and the identities to talk to it.
type rig struct {
	rig       *harness.Rig
	exit      *harness.Agent
	backend   *harness.Backend
	entryPriv *handshakeKeys
}

// handshakeKeys are the parsed keys of the rig's entry identity, for tests
// that act as the entry themselves.
type handshakeKeys struct {
	cfg   handshake.Config
	keyID [32]byte
}

// startRig makes fresh keys, starts backend handler h and an exit forwarding
// to it with --status-addr on a free port, plus extra flags.
func startRig(t *testing.T, h func(net.Conn), extra ...string) *rig {
	t.Helper()
	r := &rig{rig: harness.NewRig(t), backend: harness.StartBackend(t, h)}
	r.exit = r.rig.StartExit(t, r.backend.Addr(), harness.Options{Status: true, Args: extra})

	priv, err := handshake.LoadPrivateKey(r.rig.Entry.Key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := handshake.LoadPublicKey(r.rig.Exit.Pub)
	if err != nil {
		t.Fatal(err)
	}
	r.entryPriv = &handshakeKeys{
		cfg:   handshake.Config{PrivateKey: priv, PeerKey: pub, Timeout: 10 * time.Second},
		keyID: handshake.KeyID(&priv.PublicKey),
	}
	return r
}

// startEntry starts a real entry agent dialing the rig's exit and waits for
// its session; it returns the process and its listening address.
func (r *rig) startEntry(t *testing.T, extra ...string) (*harness.Agent, string) {
	t.Helper()
	p := r.rig.StartEntry(t, r.exit.Addr, harness.Options{Args: extra})
	p.WaitMessage(t, 1, 30*time.Second, "session established")
	return p, p.Addr
}

// stats is the exit's /status document (tunnel.Stats), decoded by field
// name so that the JSON contract is what is tested.
type stats struct {
	Role              string `json:"role"`
	Sessions          int64  `json:"sessions"`
	Streams           int64  `json:"streams"`
	StreamsTotal      int64  `json:"streams_total"`
	HandshakeFailures int64  `json:"handshake_failures"`
	HandshakesRefused int64  `json:"handshakes_refused"`
	Goroutines        int    `json:"goroutines"`
	HeapBytes         uint64 `json:"heap_bytes"`
	OpenFDs           int    `json:"open_fds"`
}

// status fetches the exit's /status.
func (r *rig) status() (stats, error) { return r.statusQuery("") }

// liveStatus fetches the exit's /status after a garbage collection, so that
// heap_bytes counts what the exit keeps, not garbage awaiting collection.
func (r *rig) liveStatus(t testing.TB) stats {
	t.Helper()
	s, err := r.statusQuery("?gc=1")
	if err != nil {
		t.Fatalf("exit /status?gc=1: %v", err)
	}
	return s
}

func (r *rig) statusQuery(query string) (stats, error) {
	var s stats
	body, err := r.exit.Get("/status" + query)
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(body, &s); err != nil {
		return s, fmt.Errorf("GET /status: %w", err)
	}
	if s.Role != "exit" || s.Goroutines <= 0 || s.HeapBytes == 0 {
		return s, fmt.Errorf("GET /status: implausible document %+v", s)
	}
	return s, nil
}

// mustStatus is status that fails the test on error.
func (r *rig) mustStatus(t testing.TB) stats {
	t.Helper()
	s, err := r.status()
	if err != nil {
		t.Fatalf("exit /status: %v", err)
	}
	return s
}

// waitStatus polls /status until ok accepts it, failing after timeout.
func (r *rig) waitStatus(t testing.TB, timeout time.Duration, what string, ok func(stats) bool) stats {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s, err := r.status()
		if err == nil && ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("exit /status never showed %s within %v: last %+v, err %v", what, timeout, s, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sample is one observation of the exit's resources.
type sample struct {
	at   time.Time
	st   stats
	rss  int64
	fail error // the status request failed
}

// sampler polls the exit's /status and VmRSS every interval until stopped.
type sampler struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	all  []sample
}

func (r *rig) startSampler(interval time.Duration) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			st, err := r.status()
			rss, rerr := harness.StatusKiB(r.exit.Pid(), "VmRSS")
			rss <<= 10
			if err == nil {
				err = rerr
			}
			s.mu.Lock()
			s.all = append(s.all, sample{at: time.Now(), st: st, rss: rss, fail: err})
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// finish stops the sampler and returns its samples.
func (s *sampler) finish() []sample {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sample(nil), s.all...)
}

// peaks summarises samples taken in [from, to).
type peaks struct {
	n, failed  int
	heap       uint64
	goroutines int
	fds        int
	rss        int64
}

func summarize(all []sample, from, to time.Time) peaks {
	var p peaks
	for _, s := range all {
		if s.at.Before(from) || !s.at.Before(to) {
			continue
		}
		if s.fail != nil {
			p.failed++
			continue
		}
		p.n++
		p.heap = max(p.heap, s.st.HeapBytes)
		p.goroutines = max(p.goroutines, s.st.Goroutines)
		p.fds = max(p.fds, s.st.OpenFDs)
		p.rss = max(p.rss, s.rss)
	}
	return p
}

func (p peaks) String() string {
	return fmt.Sprintf("%d samples (%d failed): peak heap %.1f MiB, peak VmRSS %.1f MiB, peak goroutines %d, peak open fds %d",
		p.n, p.failed, float64(p.heap)/mib, float64(p.rss)/mib, p.goroutines, p.fds)
}

// rssLimit scales a resident-memory bound for a race-enabled binary, whose
// shadow memory multiplies its footprint.
func rssLimit(plain int64) int64 {
	if harness.RaceBuild() {
		return 6 * plain
	}
	return plain
}

// Handshake wire layout (PROTOCOL.md 2.1), replicated here so that a test
// can send a HELLO_I without running an initiator.
const (
	msgHeaderLen = 4
	msgHelloI    = 0x01
	msgHelloR    = 0x02
	msgAlert     = 0x15
	alertBusy    = 8
)

var preface = []byte("TUNNEL\x00\x01")

// helloI returns preface || HELLO_I offering suite 0x01 with fresh random
// X25519 and ML-KEM-768 shares and keyID as the initiator's key id: what
// an authorized entry sends first, but from a client that has no private
// key and will never send KEY_I.
func helloI(t testing.TB, keyID [32]byte) []byte {
	t.Helper()
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dk, err := mlkem.GenerateKey768()
	if err != nil {
		t.Fatal(err)
	}
	body := []byte{1, 0x01}
	random := make([]byte, 32)
	rand.Read(random)
	body = append(body, random...)
	body = append(body, x.PublicKey().Bytes()...)
	body = append(body, dk.EncapsulationKey().Bytes()...)
	body = append(body, keyID[:]...)
	if len(body) != 2+32+32+1184+32 {
		t.Fatalf("HELLO_I body is %d bytes", len(body))
	}
	m := append([]byte(nil), preface...)
	m = append(m, msgHelloI, byte(len(body)>>16), byte(len(body)>>8), byte(len(body)))
	return append(m, body...)
}

// readReply reads the exit's first handshake message: its type and body.
func readReply(c net.Conn) (typ byte, body []byte, err error) {
	var hdr [msgHeaderLen]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
	if n > 8192 {
		return hdr[0], nil, fmt.Errorf("reply of type %#x claims %d bytes", hdr[0], n)
	}
	body = make([]byte, n)
	if _, err := io.ReadFull(c, body); err != nil {
		return hdr[0], nil, err
	}
	return hdr[0], body, nil
}

// session is an authenticated yamux client session of the rig's entry
// identity, run by the test: handshake.Initiate, then yamux over the
// record layer, as a real entry would, but under the test's control.
type session struct {
	*yamux.Session
}

func (r *rig) dialSession(t testing.TB) *session {
	t.Helper()
	c, err := net.DialTimeout("tcp", r.exit.Addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cfg := r.entryPriv.cfg
	res, err := handshake.Initiate(context.Background(), c, &cfg)
	if err != nil {
		t.Fatalf("handshake with the exit as the authorized entry: %v", err)
	}
	yc := yamux.DefaultConfig()
	yc.LogOutput = io.Discard
	yc.EnableKeepAlive = false // the test's own pings only
	s, err := yamux.Client(res.Conn, yc)
	if err != nil {
		res.Conn.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &session{s}
}

// open opens a stream for the exit's default backend and sends its header
// (PROTOCOL.md section 4) with origin.
func (s *session) open(origin string) (*yamux.Stream, error) {
	return s.openService("", origin)
}

// openService opens a stream and sends its header naming service.
func (s *session) openService(service, origin string) (*yamux.Stream, error) {
	st, err := s.OpenStream()
	if err != nil {
		return nil, err
	}
	hdr := append([]byte{1, byte(len(service))}, service...)
	hdr = append(hdr, byte(len(origin)))
	hdr = append(hdr, origin...)
	if _, err := st.Write(hdr); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// readStatus reads the exit's answer to a stream header: status u8,
// msg_len u8, msg.
func readStatus(st *yamux.Stream, timeout time.Duration) (byte, string, error) {
	st.SetReadDeadline(time.Now().Add(timeout))
	defer st.SetReadDeadline(time.Time{})
	var b [2]byte
	if _, err := io.ReadFull(st, b[:]); err != nil {
		return 0, "", fmt.Errorf("reading status: %w", err)
	}
	msg := make([]byte, b[1])
	if _, err := io.ReadFull(st, msg); err != nil {
		return b[0], "", fmt.Errorf("reading status message: %w", err)
	}
	return b[0], string(msg), nil
}

// halfStream gives a yamux stream the CloseWrite of harness.HalfCloser:
// yamux's Close is a half-close.
type halfStream struct{ *yamux.Stream }

func (h halfStream) CloseWrite() error { return h.Stream.Close() }
