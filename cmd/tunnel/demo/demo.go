// Package demo is the command's showcase (`tunnel demo`): a self-contained run of an entry and an
// exit on loopback that shows what crosses the wire between them.
package demo

// The demo runs everything on loopback in one process:
//
//	client ──▶ entry ══▶ relay ══▶ exit ──▶ backend
//	     plaintext    encrypted     plaintext
//
// The relay copies bytes between entry and exit unchanged and records the entry→exit direction,
// so the demo can show and check what an observer of the wire sees. Keys are fresh RSA keys made
// in memory, 2048 bits (the protocol's minimum, so the demo starts quickly; tunnel keygen makes
// 3072-bit keys).

import (
	"bytes"
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// demoKeyBits is the demo's RSA key size: the protocol's minimum, so the demo starts quickly.
const demoKeyBits = 2048

// demoMessages are what the demo client sends, one write each. Read-only.
var demoMessages = []string{
	"GET /accounts/alice/balance HTTP/1.1\r\nHost: bank.internal\r\n\r\n",
	"PASSWORD hunter2 for user alice\n",
	"SELECT card_number FROM payments WHERE customer = 'alice';\n",
	"Meet me at the old mill at midnight. Bring the blueprints.\n",
}

// demoPiece is the length of the message pieces searched for on the wire.
const demoPiece = 8

// demoBulkLine is repeated to make the bulk payload: readable text, so that its absence from the
// wire means something. The relay searches the wire for its first demoMarkerLen bytes.
const (
	demoBulkLine  = "tunnel demo bulk payload: the quick brown fox jumps over the lazy dog\n"
	demoMarkerLen = 40
)

// Capture limits: the backend keeps the first demoHeadCap bytes of each connection, the relay the
// first demoWireCap bytes of the wire; beyond that they only count.
const (
	demoHeadCap = 64 << 10
	demoWireCap = 1 << 20
)

// demoOptions sizes the demo; Run uses defaultDemoOptions.
type demoOptions struct {
	bulkBytes   int64         // bytes pushed in the throughput run
	bulkTimeout time.Duration // the throughput run stops sending early after this long
	stepTimeout time.Duration // how long to wait for the backend to see what was sent
}

func defaultDemoOptions() demoOptions {
	return demoOptions{bulkBytes: 256 << 20, bulkTimeout: 6 * time.Second, stepTimeout: 10 * time.Second}
}

// demoResult is what the demo observed, for tests.
type demoResult struct {
	wire         []byte // entry→exit bytes recorded up to the end of the message phase
	sent         []byte // what the client sent in the message phase
	received     []byte // what the backend received in the message phase
	bulkSent     int64
	bulkReceived int64
	bulkCRCSent  uint32
	bulkCRCRecv  uint32
	bulkOnWire   int64 // entry→exit bytes during the bulk phase
	bulkMarker   bool  // the bulk payload's text was seen on the wire
}

// Run runs a self-contained loopback demo and writes what it shows to out. It starts a
// backend, an exit, a recording relay and an entry on 127.0.0.1, sends a few readable messages
// through, shows each as the client sent it, as it crossed the wire between entry and exit, and
// as the backend received it; checks that no plaintext crossed the wire and that the backend got
// exactly what was sent; then pushes 256 MiB (or as much as fits in 6 seconds) through and
// prints the throughput. It returns an error if a check fails or ctx ends first. Every goroutine
// it starts has stopped when it returns. The agents log to log.
func Run(ctx context.Context, out io.Writer, log zerolog.Logger) error {
	_, err := runDemo(ctx, out, log, defaultDemoOptions())
	return err
}

func runDemo(ctx context.Context, out io.Writer, log zerolog.Logger, opt demoOptions) (res demoResult, err error) {
	p := func(format string, args ...any) { fmt.Fprintf(out, format, args...) }
	p("tunnel demo: everything on 127.0.0.1, in this process.\n\n")
	p("  client ──▶ entry ══▶ relay ══▶ exit ──▶ backend\n")
	p("       plaintext   encrypted    plaintext\n\n")

	start := time.Now()
	entryKey, exitKey, err := demoKeys()
	if err != nil {
		return res, err
	}
	p("Made two fresh %d-bit RSA keys in memory in %v (2048 bits to start quickly;\n`tunnel keygen` makes %d-bit keys).\n",
		demoKeyBits, time.Since(start).Round(time.Millisecond), handshake.DefaultKeyBits)
	p("  entry key %s\n  exit key  %s\n\n", handshake.Fingerprint(&entryKey.PublicKey), handshake.Fingerprint(&exitKey.PublicKey))

	// Shutdown runs the closers in reverse order of start, then waits for every goroutine.
	var wg sync.WaitGroup
	var closers []func()
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		wg.Wait()
	}()
	listen := func() (net.Listener, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("demo: listen on loopback: %w", err)
		}
		return ln, nil
	}

	backendLn, err := listen()
	if err != nil {
		return res, err
	}
	backend := newDemoBackend(backendLn, &wg)
	closers = append(closers, backend.close)

	// The agents stop when agentCtx ends; Serve closes their listeners.
	agentCtx, stopAgents := context.WithCancel(context.Background())
	closers = append(closers, stopAgents)
	serveErrs := make(chan error, 2)

	exitLn, err := listen()
	if err != nil {
		return res, err
	}
	xs := tunnel.ExitSettings{
		Services:     []tunnel.ExitService{{Backend: backendLn.Addr().String()}},
		DrainTimeout: 2 * time.Second,
	}
	auth, err := handshake.NewKeySet(&entryKey.PublicKey)
	if err != nil {
		exitLn.Close()
		return res, fmt.Errorf("demo: exit: %w", err)
	}
	exit, err := tunnel.NewExit(tunnel.ExitConfig{Settings: xs, Key: exitKey, Authorized: auth}, log)
	if err != nil {
		exitLn.Close()
		return res, fmt.Errorf("demo: exit: %w", err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveErrs <- exit.Serve(agentCtx, exitLn)
	}()

	relayLn, err := listen()
	if err != nil {
		return res, err
	}
	relay := newDemoRelay(relayLn, exitLn.Addr().String(), []byte(demoBulkLine[:demoMarkerLen]), &wg)
	closers = append(closers, relay.close)

	entryLn, err := listen()
	if err != nil {
		return res, err
	}
	ns := tunnel.EntrySettings{Peers: []string{relayLn.Addr().String()}, DrainTimeout: 2 * time.Second}
	entry, err := tunnel.NewEntry(tunnel.EntryConfig{Settings: ns, Key: entryKey, PeerKey: &exitKey.PublicKey}, log)
	if err != nil {
		entryLn.Close()
		return res, fmt.Errorf("demo: entry: %w", err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveErrs <- entry.Serve(agentCtx, entryLn)
	}()

	p("  backend %-16s records what it receives\n", backendLn.Addr())
	p("  exit    %-16s accepts only the entry's key; dials the backend\n", exitLn.Addr())
	p("  relay   %-16s passes bytes between entry and exit unchanged, and records them\n", relayLn.Addr())
	p("  entry   %-16s apps connect here; pinned to the exit's key; its peer is the relay\n\n", entryLn.Addr())

	// Message phase. Connecting makes the entry open a stream on its session, and the exit
	// connect to the backend; after that, each message is one write, followed by a wait until
	// the backend has it, so that the wire bytes recorded meanwhile are that message's.
	var d net.Dialer
	client, err := d.DialContext(ctx, "tcp", entryLn.Addr().String())
	if err != nil {
		return res, fmt.Errorf("demo: connect to the entry: %w", err)
	}
	closers = append(closers, func() { client.Close() })
	sink, err := backend.next(ctx, opt.stepTimeout)
	if err != nil {
		return res, fmt.Errorf("demo: first connection: %w", err)
	}
	mark := relay.wire.count()
	p("A client connected to the entry; the entry and the exit made their handshake and the entry\n")
	p("opened a stream for the client (%d bytes entry→exit so far); the exit connected to the backend.\n", mark)
	p("Below, each message is one record on the wire (PROTOCOL.md section 3): a 4-byte length in the\n")
	p("clear, a 16-byte random IV, the AES-256-CFB ciphertext of a type byte, a 12-byte yamux header and\n")
	p("the message, then a 32-byte HMAC-SHA256 tag.\n\n")
	for i, msg := range demoMessages {
		if _, err := io.WriteString(client, msg); err != nil {
			return res, fmt.Errorf("demo: message %d: write to the entry: %w", i+1, err)
		}
		before := len(res.sent)
		res.sent = append(res.sent, msg...)
		if err := sink.wait(ctx, int64(len(res.sent)), opt.stepTimeout); err != nil {
			return res, fmt.Errorf("demo: message %d: %w", i+1, err)
		}
		wire := relay.wire.since(mark)
		mark += int64(len(wire))
		got := sink.head()
		p("── Message %d ──\n", i+1)
		p("client sent (%d bytes):\n%s", len(msg), quoteLines(msg))
		p("on the wire entry→exit (%d bytes):\n%s", len(wire), hexDump(wire))
		p("backend received (%d bytes):\n%s\n", len(got)-before, quoteLines(string(got[before:])))
	}
	res.received = sink.head()
	res.wire = relay.wire.all()

	// The checks: exact delivery, and no message, nor any demoPiece-byte piece of one, on the wire.
	if !bytes.Equal(res.received, res.sent) {
		return res, fmt.Errorf("demo: FAILED: the backend received %q, but the client sent %q", res.received, res.sent)
	}
	if piece, found := plaintextOnWire(res.wire, demoMessages); found {
		return res, fmt.Errorf("demo: FAILED: plaintext %q of a message appears on the wire", piece)
	}
	p("Checked: the backend received exactly the %d bytes the client sent; no message, nor any\n", len(res.sent))
	p("%d-byte piece of one, appears in the %d bytes that crossed the wire from entry to exit.\n\n", demoPiece, len(res.wire))
	if err := hangUp(client, opt.stepTimeout); err != nil {
		return res, err
	}

	if err := demoBulk(ctx, p, &d, entryLn.Addr().String(), backend, relay, opt, &res); err != nil {
		return res, err
	}

	stopAgents()
	for range 2 {
		if err := <-serveErrs; err != nil {
			return res, fmt.Errorf("demo: agent stopped with: %w", err)
		}
	}
	p("Stopped the entry and the exit cleanly.\n")
	return res, nil
}

// demoBulk pushes opt.bulkBytes of demoBulkLine text through a new connection, waits until the
// backend has it all, and reports throughput, wire overhead and the checks.
func demoBulk(ctx context.Context, p func(string, ...any), d *net.Dialer, entryAddr string, backend *demoBackend,
	relay *demoRelay, opt demoOptions, res *demoResult) error {
	buf := bytes.Repeat([]byte(demoBulkLine), (1<<20)/len(demoBulkLine)+1)[:1<<20]
	conn, err := d.DialContext(ctx, "tcp", entryAddr)
	if err != nil {
		return fmt.Errorf("demo: throughput: connect to the entry: %w", err)
	}
	defer conn.Close()
	sink, err := backend.next(ctx, opt.stepTimeout)
	if err != nil {
		return fmt.Errorf("demo: throughput: %w", err)
	}
	p("Pushing %s of text through one connection...\n", mib(opt.bulkBytes))

	wireStart := relay.wire.count()
	start := time.Now()
	conn.SetWriteDeadline(start.Add(opt.bulkTimeout + opt.stepTimeout))
	stop := context.AfterFunc(ctx, func() { conn.SetWriteDeadline(time.Now()) })
	defer stop()
	var sent int64
	var crc uint32
	for sent < opt.bulkBytes && time.Since(start) < opt.bulkTimeout {
		chunk := buf[:min(int64(len(buf)), opt.bulkBytes-sent)]
		n, err := conn.Write(chunk)
		crc = crc32.Update(crc, castagnoli, chunk[:n])
		sent += int64(n)
		if err != nil {
			return fmt.Errorf("demo: throughput: write to the entry after %d bytes: %w", sent, err)
		}
	}
	if err := sink.wait(ctx, sent, opt.stepTimeout); err != nil {
		return fmt.Errorf("demo: throughput: %w", err)
	}
	elapsed := time.Since(start)
	res.bulkSent, res.bulkCRCSent = sent, crc
	res.bulkReceived, res.bulkCRCRecv = sink.sum()
	res.bulkOnWire = relay.wire.count() - wireStart
	res.bulkMarker = relay.wire.sawMarker()

	if sent < opt.bulkBytes {
		p("(stopped sending after %v)\n", opt.bulkTimeout)
	}
	p("%s in %v: %.1f MB/s (1 MB = 10^6 bytes), client to backend through entry and exit.\n",
		mib(sent), elapsed.Round(time.Millisecond), float64(sent)/elapsed.Seconds()/1e6)
	p("The wire carried %d bytes entry→exit for them (%+.2f%%: records, MACs and stream framing).\n",
		res.bulkOnWire, 100*(float64(res.bulkOnWire)/float64(sent)-1))
	if res.bulkReceived != sent || res.bulkCRCRecv != crc {
		return fmt.Errorf("demo: FAILED: the backend received %d bytes (CRC-32C %08x), the client sent %d (%08x)",
			res.bulkReceived, res.bulkCRCRecv, sent, crc)
	}
	if res.bulkMarker {
		return fmt.Errorf("demo: FAILED: the payload text %q appears on the wire", demoBulkLine[:demoMarkerLen])
	}
	if err := hangUp(conn, opt.stepTimeout); err != nil {
		return err
	}
	p("Checked: the backend received all %d bytes (same CRC-32C, %08x), and the payload's text\n", sent, crc)
	p("(%q) appears nowhere in the %d bytes of the wire.\n\n", demoBulkLine[:demoMarkerLen], relay.wire.count())
	return nil
}

// hangUp ends a client connection the way a polite app does: it half-closes, then reads until
// the far end (backend, exit, entry) has closed too, so no stream is still open when the agents
// stop. The demo's backend sends nothing, so any data is an error.
func hangUp(c net.Conn, timeout time.Duration) error {
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return fmt.Errorf("demo: half-close the client connection: %w", err)
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	n, err := io.Copy(io.Discard, c)
	c.Close()
	if err != nil || n != 0 {
		return fmt.Errorf("demo: closing the client connection: read %d bytes, %v", n, err)
	}
	return nil
}

// plaintextOnWire reports the first demoPiece-byte piece of msgs found in wire (a message
// shorter than demoPiece is searched for whole).
func plaintextOnWire(wire []byte, msgs []string) (string, bool) {
	for _, msg := range msgs {
		n := min(demoPiece, len(msg))
		for j := 0; j+n <= len(msg); j++ {
			if bytes.Contains(wire, []byte(msg[j:j+n])) {
				return msg[j : j+n], true
			}
		}
	}
	return "", false
}

// demoKeys makes the entry's and the exit's keys, in parallel.
func demoKeys() (entry, exit *rsa.PrivateKey, err error) {
	var wg sync.WaitGroup
	var errEntry, errExit error
	wg.Add(2)
	go func() { defer wg.Done(); entry, errEntry = handshake.GenerateKey(demoKeyBits) }()
	go func() { defer wg.Done(); exit, errExit = handshake.GenerateKey(demoKeyBits) }()
	wg.Wait()
	if err := errors.Join(errEntry, errExit); err != nil {
		return nil, nil, fmt.Errorf("demo: generate keys: %w", err)
	}
	return entry, exit, nil
}

// demoSink records one backend connection: a byte count, a CRC-32C, and the first demoHeadCap
// bytes. Safe for concurrent use; one goroutine waits on it.
type demoSink struct {
	mu      sync.Mutex
	n       int64
	crc     uint32
	first   []byte
	err     error         // why reading stopped, once it has
	updated chan struct{} // signalled (non-blocking) after each change
}

// castagnoli is the CRC-32C table (read-only) for checking the bulk payload end to end.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (s *demoSink) Write(b []byte) (int, error) {
	s.mu.Lock()
	s.n += int64(len(b))
	s.crc = crc32.Update(s.crc, castagnoli, b)
	if room := demoHeadCap - len(s.first); room > 0 {
		s.first = append(s.first, b[:min(room, len(b))]...)
	}
	s.mu.Unlock()
	s.signal()
	return len(b), nil
}

func (s *demoSink) signal() {
	select {
	case s.updated <- struct{}{}:
	default:
	}
}

func (s *demoSink) head() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.first)
}

func (s *demoSink) sum() (int64, uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n, s.crc
}

// wait returns once the sink holds at least n bytes, or an error if the connection ended, ctx
// ended or timeout passed first.
func (s *demoSink) wait(ctx context.Context, n int64, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		got, err := s.n, s.err
		s.mu.Unlock()
		switch {
		case got >= n:
			return nil
		case err != nil:
			return fmt.Errorf("the backend's connection ended after %d of %d bytes: %w", got, n, err)
		}
		select {
		case <-s.updated:
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return fmt.Errorf("the backend received %d of %d bytes within %v", got, n, timeout)
		}
	}
}

// demoBackend accepts connections and records each in a demoSink, handed out in order by next.
type demoBackend struct {
	ln    net.Listener
	sinks chan *demoSink
	conns demoConns
}

func newDemoBackend(ln net.Listener, wg *sync.WaitGroup) *demoBackend {
	b := &demoBackend{ln: ln, sinks: make(chan *demoSink, 16)}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !b.conns.add(c) {
				return
			}
			s := &demoSink{updated: make(chan struct{}, 1)}
			select {
			case b.sinks <- s:
			default: // nobody will look at it; it still drains the connection
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer b.conns.remove(c)
				_, err := io.Copy(s, c)
				if err == nil {
					err = io.EOF
				}
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
				s.signal()
			}()
		}
	}()
	return b
}

// next returns the sink of the next connection the backend accepts.
func (b *demoBackend) next(ctx context.Context, timeout time.Duration) (*demoSink, error) {
	select {
	case s := <-b.sinks:
		return s, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(timeout):
		return nil, fmt.Errorf("the exit did not connect to the backend within %v", timeout)
	}
}

func (b *demoBackend) close() {
	b.ln.Close()
	b.conns.closeAll()
}

// demoConns tracks open connections so that close can end them all; once closed, it refuses new
// ones (and closes them).
type demoConns struct {
	mu     sync.Mutex
	set    map[net.Conn]struct{}
	closed bool
}

func (cs *demoConns) add(c net.Conn) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		c.Close()
		return false
	}
	if cs.set == nil {
		cs.set = map[net.Conn]struct{}{}
	}
	cs.set[c] = struct{}{}
	return true
}

func (cs *demoConns) remove(c net.Conn) {
	cs.mu.Lock()
	delete(cs.set, c)
	cs.mu.Unlock()
	c.Close()
}

func (cs *demoConns) closeAll() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.closed = true
	for c := range cs.set {
		c.Close()
	}
}

// demoRelay forwards each connection it accepts to target, recording the accepted side's bytes
// (entry→exit) in wire.
type demoRelay struct {
	ln    net.Listener
	wire  *demoWire
	conns demoConns
}

func newDemoRelay(ln net.Listener, target string, marker []byte, wg *sync.WaitGroup) *demoRelay {
	r := &demoRelay{ln: ln, wire: &demoWire{marker: marker}}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			if !r.conns.add(in) {
				return
			}
			out, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				r.conns.remove(in)
				continue
			}
			if !r.conns.add(out) {
				in.Close()
				return
			}
			var pair sync.WaitGroup
			pair.Add(2)
			wg.Add(3)
			go func() { defer wg.Done(); defer pair.Done(); pipe(out, io.TeeReader(in, r.wire)) }()
			go func() { defer wg.Done(); defer pair.Done(); pipe(in, out) }()
			go func() { defer wg.Done(); pair.Wait(); r.conns.remove(in); r.conns.remove(out) }()
		}
	}()
	return r
}

// pipe copies src to dst, then half-closes dst so the peer sees the end of this direction.
func pipe(dst net.Conn, src io.Reader) {
	io.Copy(struct{ io.Writer }{dst}, src) // the wrapper hides ReadFrom: every byte passes through src
	if hc, ok := dst.(interface{ CloseWrite() error }); ok {
		hc.CloseWrite()
	} else {
		dst.Close()
	}
}

func (r *demoRelay) close() {
	r.ln.Close()
	r.conns.closeAll()
}

// demoWire records the bytes written to it: a count, the first demoWireCap bytes, and whether
// marker ever appeared, even across writes. Safe for concurrent use.
type demoWire struct {
	mu     sync.Mutex
	n      int64
	first  []byte
	marker []byte
	tail   []byte // the last len(marker)-1 bytes seen
	seen   bool
}

func (w *demoWire) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.n += int64(len(b))
	if room := demoWireCap - len(w.first); room > 0 {
		w.first = append(w.first, b[:min(room, len(b))]...)
	}
	k := len(w.marker) - 1
	if !w.seen {
		edge := append(bytes.Clone(w.tail), b[:min(k, len(b))]...)
		w.seen = bytes.Contains(edge, w.marker) || bytes.Contains(b, w.marker)
	}
	w.tail = append(w.tail, b[max(0, len(b)-k):]...)
	w.tail = w.tail[max(0, len(w.tail)-k):]
	return len(b), nil
}

func (w *demoWire) count() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

func (w *demoWire) sawMarker() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen
}

func (w *demoWire) all() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return bytes.Clone(w.first)
}

// since returns the recorded bytes from offset off on.
func (w *demoWire) since(off int64) []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	if off >= int64(len(w.first)) {
		return nil
	}
	return bytes.Clone(w.first[off:])
}

// quoteLines shows text as Go-quoted lines, indented, so that \r and \n are visible.
func quoteLines(s string) string {
	var b strings.Builder
	for s != "" {
		i := strings.IndexByte(s, '\n') + 1
		if i == 0 {
			i = len(s)
		}
		b.WriteString("    " + strconv.Quote(s[:i]) + "\n")
		s = s[i:]
	}
	return b.String()
}

// hexDump formats b as indented hex and ASCII, 16 bytes a line.
func hexDump(b []byte) string {
	var s strings.Builder
	for off := 0; off < len(b); off += 16 {
		line := b[off:min(off+16, len(b))]
		fmt.Fprintf(&s, "    %04x  ", off)
		for i := range 16 {
			if i < len(line) {
				fmt.Fprintf(&s, "%02x ", line[i])
			} else {
				s.WriteString("   ")
			}
			if i == 7 {
				s.WriteByte(' ')
			}
		}
		s.WriteString(" |")
		for _, c := range line {
			if c < 0x20 || c > 0x7e {
				c = '.'
			}
			s.WriteByte(c)
		}
		s.WriteString("|\n")
	}
	return s.String()
}

func mib(n int64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
