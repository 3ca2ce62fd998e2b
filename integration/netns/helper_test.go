package netns

// Helper mode. Clients, backends and the delaying relay must run inside a
// namespace, so a test starts this same test binary there with
// "ip netns exec NS <test binary> ARGS" and helperEnv set to the mode;
// TestMain then runs runHelper instead of the tests. A helper reports on
// stdout, one JSON event per line, and logs problems on stderr.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// helperEnv names the environment variable whose value is the helper mode.
const helperEnv = "TUNNEL_NETNS_HELPER"

// event is one line a helper writes on stdout.
type event struct {
	Event   string  `json:"event"` // listening, bulk, marker, conn, flowing, relayed, stats, done
	Addr    string  `json:"addr,omitempty"`
	ID      int64   `json:"id,omitempty"`
	Slow    bool    `json:"slow,omitempty"`
	Start   int64   `json:"start,omitempty"` // Unix nanoseconds
	End     int64   `json:"end,omitempty"`   // Unix nanoseconds
	OK      bool    `json:"ok,omitempty"`
	Err     string  `json:"err,omitempty"`
	Class   string  `json:"class,omitempty"` // of Err, see classify
	Conns   int     `json:"conns,omitempty"`
	Failed  int     `json:"failed,omitempty"`
	Bytes   int64   `json:"bytes,omitempty"` // payload bytes carried each way
	Chunks  int64   `json:"chunks,omitempty"`
	Seconds float64 `json:"seconds,omitempty"`
}

// emitter writes events to stdout; safe for concurrent use.
type emitter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (e *emitter) emit(ev event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.enc.Encode(ev)
}

// runHelper runs helper mode with args and returns the exit code.
func runHelper(mode string, args []string) int {
	out := &emitter{enc: json.NewEncoder(os.Stdout)}
	fs := flag.NewFlagSet(mode, flag.ContinueOnError)
	var err error
	switch mode {
	case "echo":
		err = helperEcho(out, fs, args)
	case "relay":
		err = helperRelay(out, fs, args)
	case "bulk":
		err = helperBulk(out, fs, args)
	case "marker":
		err = helperMarker(out, fs, args)
	case "loop":
		err = helperLoop(out, fs, args)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "netns helper %s: %v\n", mode, err)
		return 1
	}
	return 0
}

// exitAtEOF ends the helper when its stdin ends: the test process holds
// the other end, so a helper does not outlive a test that was killed.
func exitAtEOF(onLine func(string)) {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if onLine != nil {
			onLine(strings.TrimSpace(sc.Text()))
		}
	}
	os.Exit(0)
}

// helperEcho serves harness.HashEcho on -listen until its stdin ends.
func helperEcho(out *emitter, fs *flag.FlagSet, args []string) error {
	listen := fs.String("listen", "", "address to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	go exitAtEOF(nil)
	out.emit(event{Event: "listening", Addr: ln.Addr().String()})
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			harness.HashEcho(c)
		}()
	}
}

// helperRelay accepts on -listen and relays each connection to -target,
// holding every chunk read for a random delay in [-min, -max] before
// writing it on, until its stdin ends. It emits "relayed" when a relayed
// connection ends, and answers a line "stats" on stdin with a "stats"
// event: connections accepted, bytes and chunks relayed (both ways) and the
// mean time a chunk was held (Seconds).
//
// This stands in for netem's delay, which this machine lacks. A user-space
// relay can only delay: TCP hands it an ordered byte stream and takes one,
// so segments cannot be reordered on the wire this way (netem's reorder
// would do that); chunks keep their order here, each due no earlier than
// the one before it.
func helperRelay(out *emitter, fs *flag.FlagSet, args []string) error {
	listen := fs.String("listen", "", "address to listen on")
	target := fs.String("target", "", "address to relay to")
	lo := fs.Duration("min", 20*time.Millisecond, "shortest delay")
	hi := fs.Duration("max", 50*time.Millisecond, "longest delay")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *hi < *lo {
		return errors.New("-max is below -min")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	var st relayStats
	go exitAtEOF(func(line string) {
		if line == "stats" {
			chunks := st.chunks.Load()
			out.emit(event{Event: "stats", Conns: int(st.conns.Load()), Bytes: st.bytes.Load(), Chunks: chunks,
				Seconds: time.Duration(st.held.Load()).Seconds() / float64(max(chunks, 1))})
		}
	})
	out.emit(event{Event: "listening", Addr: ln.Addr().String()})
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		st.conns.Add(1)
		go func() {
			start := time.Now()
			src := c.(*net.TCPConn)
			d, err := net.DialTimeout("tcp", *target, 5*time.Second)
			if err != nil {
				fmt.Fprintf(os.Stderr, "relay: %v\n", err)
				src.SetLinger(0)
				src.Close()
				return
			}
			dst := d.(*net.TCPConn)
			var up, down int64
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); up = delayedCopy(dst, src, *lo, *hi, &st) }()
			go func() { defer wg.Done(); down = delayedCopy(src, dst, *lo, *hi, &st) }()
			wg.Wait()
			src.Close()
			dst.Close()
			out.emit(event{Event: "relayed", Bytes: up + down, Seconds: time.Since(start).Seconds()})
		}()
	}
}

// relayStats counts what helperRelay did.
type relayStats struct {
	conns, bytes, chunks atomic.Int64
	held                 atomic.Int64 // nanoseconds chunks spent in the relay, summed
}

// delayedCopy copies src to dst, delaying each chunk read by a random
// duration in [lo, hi] while keeping the order, and returns the bytes
// copied. src's EOF becomes dst's CloseWrite; any other end resets dst (a
// write failure resets src), so an abort travels on as an abort.
func delayedCopy(dst, src *net.TCPConn, lo, hi time.Duration, st *relayStats) int64 {
	type chunk struct {
		data      []byte
		read, due time.Time
	}
	chunks := make(chan chunk, 64) // bounds what the relay holds
	readErr := make(chan error, 1)
	go func() {
		defer close(chunks)
		var last time.Time
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				now := time.Now()
				due := now.Add(lo + rand.N(hi-lo+1))
				if due.Before(last) {
					due = last
				}
				last = due
				chunks <- chunk{buf[:n], now, due}
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()
	var total int64
	for c := range chunks {
		time.Sleep(time.Until(c.due))
		n, err := dst.Write(c.data)
		total += int64(n)
		st.bytes.Add(int64(n))
		st.chunks.Add(1)
		st.held.Add(int64(time.Since(c.read)))
		if err != nil {
			src.SetLinger(0)
			src.Close()
			for range chunks {
			}
			return total
		}
	}
	if err := <-readErr; errors.Is(err, io.EOF) {
		dst.CloseWrite()
	} else {
		dst.SetLinger(0)
		dst.Close()
	}
	return total
}

// helperBulk runs -conns concurrent hash-echo exchanges of -size bytes
// with -addr and emits one "bulk" event.
func helperBulk(out *emitter, fs *flag.FlagSet, args []string) error {
	addr := fs.String("addr", "", "address to dial")
	conns := fs.Int("conns", 1, "concurrent connections")
	size := fs.Int64("size", 1<<20, "bytes each way per connection")
	timeout := fs.Duration("timeout", time.Minute, "deadline of each connection")
	if err := fs.Parse(args); err != nil {
		return err
	}
	start := time.Now()
	errs := make([]error, *conns)
	classes := make([]string, *conns)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			classes[i], errs[i] = exchange(*addr, *size, rand.Uint64(), *timeout, 0, nil)
		}()
	}
	wg.Wait()
	ev := event{Event: "bulk", Conns: *conns, Seconds: time.Since(start).Seconds(), OK: true}
	var msgs []string
	for i, err := range errs {
		if err != nil {
			ev.OK = false
			ev.Failed++
			msgs = append(msgs, fmt.Sprintf("conn %d: %v", i, err))
			if ev.Class == "" {
				ev.Class = classes[i]
			}
			continue
		}
		ev.Bytes += *size
	}
	ev.Err = strings.Join(msgs, "; ")
	out.emit(ev)
	return nil
}

// exchange dials addr and runs harness.HashEchoExchange over it; it
// returns the class of the error (see probeConn.classify) and the error.
// With writeDelay it sleeps that long before each write (a slow client)
// and calls flowing once when the first echoed bytes arrive.
func exchange(addr string, size int64, seed uint64, timeout, writeDelay time.Duration, flowing func()) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		err = fmt.Errorf("dial: %w", err)
		return classify(err), err
	}
	pc := &probeConn{TCPConn: c.(*net.TCPConn), delay: writeDelay, flowing: flowing}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(timeout))
	if err := harness.HashEchoExchange(pc, size, seed); err != nil {
		class := pc.classify(err)
		if class != classify(err) {
			pc.mu.Lock()
			err = fmt.Errorf("%w (the reset went to the writer: %v)", err, pc.writeErr)
			pc.mu.Unlock()
		}
		return class, err
	}
	return "", nil
}

// classify names how an exchange failed: "reset" (the connection was
// aborted: what the tunnel must do when it cannot deliver everything),
// "eof" (a clean end, FIN, before all data: a truncation the application
// could take for success), "timeout" (a hang), or "other".
func classify(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	}
	return "other"
}

// probeConn is the client's connection. It sleeps before each write if
// delay is set, reports the first bytes read to flowing, and keeps what
// classify needs: the first write error and the kernel's TCP state when a
// read first returned EOF.
type probeConn struct {
	*net.TCPConn
	delay   time.Duration
	once    sync.Once
	flowing func()

	mu       sync.Mutex
	writeErr error
	eofState uint8 // linux/tcp_states.h; 0 before EOF
}

func (c *probeConn) Write(p []byte) (int, error) {
	if c.delay > 0 {
		time.Sleep(c.delay)
	}
	n, err := c.TCPConn.Write(p)
	if err != nil {
		c.mu.Lock()
		if c.writeErr == nil {
			c.writeErr = err
		}
		c.mu.Unlock()
	}
	return n, err
}

func (c *probeConn) Read(p []byte) (int, error) {
	n, err := c.TCPConn.Read(p)
	if n > 0 && c.flowing != nil {
		c.once.Do(c.flowing)
	}
	if err == io.EOF {
		state := tcpState(c.TCPConn)
		c.mu.Lock()
		if c.eofState == 0 {
			c.eofState = state
		}
		c.mu.Unlock()
	}
	return n, err
}

// Linux TCP state (include/net/tcp_states.h) after a reset.
const tcpClose = 7

// classify is classify for an error of an exchange over c, once its reader
// and writer are done. Linux reports a received RST once, to the first read
// or write after it: with a writer and a reader at work, the reader may see
// a plain EOF on a connection that was reset. That EOF was a reset if the
// socket was then closed (TCP state CLOSE: a FIN alone leaves CLOSE_WAIT)
// and the writer got ECONNRESET (a RST after a FIN is reported as EPIPE).
func (c *probeConn) classify(err error) string {
	class := classify(err)
	c.mu.Lock()
	defer c.mu.Unlock()
	if class == "eof" && c.eofState == tcpClose && errors.Is(c.writeErr, syscall.ECONNRESET) {
		return "reset"
	}
	return class
}

// tcpState returns the kernel's state of c (tcp_info.tcpi_state), 0 if
// unknown.
func tcpState(c *net.TCPConn) uint8 {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var info [256]byte // struct tcp_info; its first byte is the state
	size := uint32(len(info))
	var state uint8
	rc.Control(func(fd uintptr) {
		_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno == 0 && size > 0 {
			state = info[0]
		}
	})
	return state
}

// helperMarker writes -marker -count times, one write each -gap apart, on
// one connection to a hash-echo server at -addr, and checks the reply: the
// same bytes XORed with harness.EchoMask, then their SHA-256. It emits one
// "marker" event.
func helperMarker(out *emitter, fs *flag.FlagSet, args []string) error {
	addr := fs.String("addr", "", "address to dial")
	marker := fs.String("marker", "", "marker string")
	count := fs.Int("count", 100, "writes of the marker")
	gap := fs.Duration("gap", 5*time.Millisecond, "pause between writes")
	if err := fs.Parse(args); err != nil {
		return err
	}
	start := time.Now()
	err := markerExchange(*addr, []byte(*marker), *count, *gap)
	ev := event{Event: "marker", OK: err == nil, Seconds: time.Since(start).Seconds(),
		Bytes: int64(*count * len(*marker))}
	if err != nil {
		ev.Err, ev.Class = err.Error(), classify(err)
	}
	out.emit(ev)
	return nil
}

func markerExchange(addr string, marker []byte, count int, gap time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	tc := c.(*net.TCPConn)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(time.Minute))
	werr := make(chan error, 1)
	go func() {
		for range count {
			if _, err := tc.Write(marker); err != nil {
				werr <- err
				return
			}
			time.Sleep(gap)
		}
		werr <- tc.CloseWrite()
	}()
	reply, rerr := io.ReadAll(tc)
	if err := <-werr; err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("reading: %w", rerr)
	}
	sent := bytes.Repeat(marker, count)
	want := make([]byte, len(sent), len(sent)+sha256.Size)
	for i, b := range sent {
		want[i] = b ^ harness.EchoMask
	}
	sum := sha256.Sum256(sent)
	want = append(want, sum[:]...)
	if !bytes.Equal(reply, want) {
		return fmt.Errorf("reply of %d bytes differs from the expected %d", len(reply), len(want))
	}
	return nil
}

// helperLoop keeps -workers connections busy with hash-echo exchanges of
// -size bytes with -addr, emitting a "conn" event as each ends, until its
// stdin ends; then it waits for the connections open and emits "done". A
// line "slow" on stdin starts one slow connection (-slow-size bytes, a
// pause of -slow-delay before each write), which emits "flowing" once its
// first echoed bytes are back.
func helperLoop(out *emitter, fs *flag.FlagSet, args []string) error {
	addr := fs.String("addr", "", "address to dial")
	workers := fs.Int("workers", 2, "concurrent connections")
	size := fs.Int64("size", 512<<10, "bytes each way per connection")
	slowSize := fs.Int64("slow-size", 4<<20, "bytes each way of a slow connection")
	slowDelay := fs.Duration("slow-delay", 50*time.Millisecond, "pause before each write of a slow connection")
	timeout := fs.Duration("timeout", time.Minute, "deadline of each connection")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var ids atomic.Int64
	one := func(slow bool) {
		id := ids.Add(1)
		start := time.Now()
		var err error
		var class string
		if slow {
			flowing := func() { out.emit(event{Event: "flowing", ID: id}) }
			class, err = exchange(*addr, *slowSize, rand.Uint64(), *timeout, *slowDelay, flowing)
		} else {
			class, err = exchange(*addr, *size, rand.Uint64(), *timeout, 0, nil)
		}
		ev := event{Event: "conn", ID: id, Slow: slow, Start: start.UnixNano(), End: time.Now().UnixNano(),
			OK: err == nil, Class: class}
		if err != nil {
			ev.Err = err.Error()
		}
		out.emit(ev)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range *workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				one(false)
				time.Sleep(20 * time.Millisecond) // bounds the rate while the tunnel is down
			}
		}()
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "slow" {
			wg.Add(1)
			go func() { defer wg.Done(); one(true) }()
		}
	}
	close(stop)
	wg.Wait()
	out.emit(event{Event: "done"})
	return nil
}

// helperProc is a helper started by a test. Its methods are safe for
// concurrent use.
type helperProc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	done   chan struct{} // closed once the process has exited and stdout is read
	stderr harness.SyncBuffer

	mu      sync.Mutex
	events  []event
	changed chan struct{} // closed and replaced when an event arrives
}

// startHelper starts this test binary in helper mode inside namespace ns.
// t.Cleanup kills it if it still runs, and logs its output if the test
// failed.
func startHelper(t *testing.T, ns, mode string, args ...string) *helperProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("locating the test binary: %v", err)
	}
	h := &helperProc{name: mode + " helper in " + ns, done: make(chan struct{}), changed: make(chan struct{})}
	h.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, exe}, args...)...)
	h.cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	h.cmd.Stderr = &h.stderr
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", h.name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var ev event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				ev = event{Event: "unparsed", Err: sc.Text()}
			}
			h.mu.Lock()
			h.events = append(h.events, ev)
			close(h.changed)
			h.changed = make(chan struct{})
			h.mu.Unlock()
		}
		h.cmd.Wait()
		close(h.done)
	}()
	t.Cleanup(func() {
		select {
		case <-h.done:
		default:
			h.cmd.Process.Kill()
			<-h.done
		}
		if t.Failed() {
			t.Logf("%s (%s): stderr:\n%s", h.name, h.cmd.ProcessState, h.stderr.String())
		}
	})
	return h
}

// Events returns a copy of the events so far.
func (h *helperProc) Events() []event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]event(nil), h.events...)
}

func isEvent(name string) func(event) bool {
	return func(ev event) bool { return ev.Event == name }
}

// waitEvent waits for the first event satisfying match and returns it; it
// fails the test when timeout passes or the helper exits first.
func (h *helperProc) waitEvent(t *testing.T, timeout time.Duration, what string, match func(event) bool) event {
	t.Helper()
	return h.waitEvents(t, 1, timeout, what, match)
}

// waitEvents waits until n events satisfy match and returns the n-th.
func (h *helperProc) waitEvents(t *testing.T, n int, timeout time.Duration, what string, match func(event) bool) event {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		events, changed := h.events, h.changed
		h.mu.Unlock()
		found := 0
		for _, ev := range events {
			if match(ev) {
				if found++; found == n {
					return ev
				}
			}
		}
		select {
		case <-changed:
		case <-h.done:
			h.mu.Lock()
			more := len(h.events) > len(events)
			h.mu.Unlock()
			if !more {
				t.Fatalf("%s exited (%s) before %s (%d of %d seen); stderr:\n%s",
					h.name, h.cmd.ProcessState, what, found, n, h.stderr.String())
			}
		case <-deadline.C:
			t.Fatalf("%s: no %s within %v (%d of %d seen); stderr:\n%s",
				h.name, what, timeout, found, n, h.stderr.String())
		}
	}
}

// closeStdin ends the helper's stdin (the loop helper then stops).
func (h *helperProc) closeStdin() { h.stdin.Close() }

// send writes one line to the helper's stdin.
func (h *helperProc) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(h.stdin, line+"\n"); err != nil {
		t.Fatalf("%s: writing to stdin: %v", h.name, err)
	}
}

// wait waits up to timeout for the helper to exit and returns its exit
// code, failing the test if it is still running.
func (h *helperProc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-h.done:
		return h.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		t.Fatalf("%s still running after %v; stderr:\n%s", h.name, timeout, h.stderr.String())
		return -1
	}
}

// TestClassify checks on loopback that a client of exchange tells a
// truncation by FIN from an abort by RST, also when its writer, not its
// reader, is the one the kernel tells about the RST.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name  string
		abort bool
		want  string
	}{
		{"fin", false, "eof"},
		{"rst", true, "reset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The server echoes a little, then ends the connection early
			// while the client is still writing.
			b := harness.StartBackend(t, func(c net.Conn) {
				tc2 := c.(*net.TCPConn)
				buf := make([]byte, 4096)
				n, _ := io.ReadFull(tc2, buf)
				tc2.Write(buf[:n])
				if tc.abort {
					tc2.SetLinger(0)
					tc2.Close()
					return
				}
				tc2.CloseWrite()
				io.Copy(io.Discard, tc2)
			})
			for range 5 {
				class, err := exchange(b.Addr(), 8<<20, 1, 30*time.Second, time.Millisecond, nil)
				if err == nil {
					t.Fatal("exchange with a server that ends early succeeded")
				}
				if class != tc.want {
					t.Fatalf("class %q, want %q (error: %v)", class, tc.want, err)
				}
			}
		})
	}
}

// TestClassifyResetSeenByWriter makes the cases probeConn.classify is
// for: the end is reported to a write first, and the read after it sees
// only EOF. A RST alone is a reset; a FIN, or a FIN and then a RST, is a
// truncation ("eof").
func TestClassifyResetSeenByWriter(t *testing.T) {
	for _, tc := range []struct {
		name      string
		fin, rst  bool
		want      string
		wantWrite error
	}{
		{"fin", true, false, "eof", nil},
		{"rst", false, true, "reset", syscall.ECONNRESET},
		{"fin-then-rst", true, true, "eof", syscall.EPIPE},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ended := make(chan struct{})
			b := harness.StartBackend(t, func(c net.Conn) {
				conn := c.(*net.TCPConn)
				io.ReadFull(conn, make([]byte, 1))
				if tc.fin {
					conn.CloseWrite()
					time.Sleep(50 * time.Millisecond) // the FIN arrives first
				}
				if tc.rst {
					conn.SetLinger(0)
					conn.Close()
					close(ended)
					return
				}
				close(ended)
				io.Copy(io.Discard, conn) // still reading: the client's writes succeed
			})
			c, err := net.Dial("tcp", b.Addr())
			if err != nil {
				t.Fatal(err)
			}
			pc := &probeConn{TCPConn: c.(*net.TCPConn)}
			defer pc.Close()
			if _, err := pc.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			<-ended
			time.Sleep(100 * time.Millisecond) // the RST or FIN arrives
			_, werr := pc.Write([]byte("x"))
			if tc.wantWrite == nil && werr != nil || tc.wantWrite != nil && !errors.Is(werr, tc.wantWrite) {
				t.Fatalf("write after the end: %v, want %v", werr, tc.wantWrite)
			}
			n, rerr := pc.Read(make([]byte, 1))
			if n != 0 || rerr != io.EOF {
				t.Fatalf("read %d bytes, %v; want EOF", n, rerr)
			}
			if got := pc.classify(fmt.Errorf("reading: %w", rerr)); got != tc.want {
				t.Errorf("class %q (TCP state %d at EOF, write error %v), want %q", got, pc.eofState, werr, tc.want)
			}
		})
	}
}
