package listen

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// scriptedListener returns the errors of script from its Accepts, one per
// call, and then a connection each time (one end of a net.Pipe). Safe for
// concurrent use.
type scriptedListener struct {
	mu     sync.Mutex
	script []error
	closed bool
}

func (l *scriptedListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: net.ErrClosed}
	}
	if len(l.script) > 0 {
		err := l.script[0]
		l.script = l.script[1:]
		return nil, err
	}
	a, b := net.Pipe()
	b.Close()
	return a, nil
}

func (l *scriptedListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	return nil
}

func (l *scriptedListener) Addr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7000}
}

// acceptErr is err as Accept on a TCP listener returns it.
func acceptErr(err syscall.Errno) error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", err)}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// TestRetrying: temporary errors (EMFILE first of all) are retried
// with a backoff of 5 ms doubling up to 1 s, and logged once per run of
// them; an accept that succeeds resets the backoff; any other error is
// returned at once.
func TestRetrying(t *testing.T) {
	emfile := acceptErr(syscall.EMFILE)
	var script []error
	for range 10 {
		script = append(script, emfile)
	}
	inner := &scriptedListener{script: script}
	var logs bytes.Buffer
	l := NewRetrying(inner, zerolog.New(&logs))
	var waits []time.Duration
	l.wait = func(d time.Duration, _ <-chan struct{}) bool {
		if l.FailingFor(time.Now().Add(time.Second)) < time.Second {
			t.Error("FailingFor during a run of failures is not the time since its first")
		}
		waits = append(waits, d)
		return true
	}
	if l.FailingFor(time.Now()) != 0 {
		t.Error("FailingFor before any failure is not 0")
	}

	c, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept after 10 EMFILE: %v, want a connection", err)
	}
	c.Close()
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if l.FailingFor(time.Now()) != 0 {
		t.Error("FailingFor after an accept succeeded is not 0")
	}
	if fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Errorf("waits %v, want %v", waits, want)
	}
	if n := strings.Count(logs.String(), `"level":"warn"`); n != 1 {
		t.Errorf("%d warnings for one run of failures, want 1:\n%s", n, logs.String())
	}
	for _, s := range []string{"out of file descriptors", "LimitNOFILE=", "ulimit -n", `"failed_accepts":10`, "accepting connections again"} {
		if !strings.Contains(logs.String(), s) {
			t.Errorf("log lacks %q:\n%s", s, logs.String())
		}
	}

	// A second run starts again from 5 ms and is logged again.
	logs.Reset()
	waits = nil
	inner.script = []error{acceptErr(syscall.ENFILE), acceptErr(syscall.ENOBUFS), acceptErr(syscall.ENOMEM),
		acceptErr(syscall.ECONNABORTED), timeoutErr{}}
	if c, err := l.Accept(); err != nil {
		t.Fatalf("Accept after ENFILE, ENOBUFS, ENOMEM, ECONNABORTED and a timeout: %v", err)
	} else {
		c.Close()
	}
	if len(waits) != 5 || waits[0] != acceptRetryMin {
		t.Errorf("second run: waits %v, want 5 starting at %v", waits, acceptRetryMin)
	}
	if n := strings.Count(logs.String(), `"level":"warn"`); n != 1 {
		t.Errorf("%d warnings for the second run, want 1:\n%s", n, logs.String())
	}

	// Anything else ends Accept, with the error as it came.
	other := acceptErr(syscall.EINVAL)
	inner.script = []error{other}
	waits = nil
	if _, err := l.Accept(); err != other || len(waits) != 0 {
		t.Errorf("EINVAL: Accept = %v after waits %v, want the error at once", err, waits)
	}
	inner.Close()
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) || len(waits) != 0 {
		t.Errorf("closed: Accept = %v after waits %v, want net.ErrClosed at once", err, waits)
	}
}

// TestRetryingClose: Close ends a wait of Accept, which then
// returns net.ErrClosed.
func TestRetryingClose(t *testing.T) {
	inner := &scriptedListener{script: []error{acceptErr(syscall.EMFILE)}}
	l := NewRetrying(inner, zerolog.Nop())
	waiting := make(chan struct{})
	l.wait = func(d time.Duration, stop <-chan struct{}) bool {
		close(waiting)
		return waitOrStop(time.Hour, stop)
	}
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	select {
	case <-waiting:
	case err := <-done:
		t.Fatalf("Accept after EMFILE returned %v, want it to wait", err)
	}
	l.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept waiting when the listener closed: %v, want net.ErrClosed", err)
	}
}

// TestRetryingRealEMFILE: on a real socket, with no descriptor left
// for the accepted connection, Accept waits instead of failing, and returns
// the connection once a descriptor is free.
func TestRetryingRealEMFILE(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewRetrying(ln, zerolog.Nop())
	defer l.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	// Take every free descriptor: the accept then fails with EMFILE. The
	// limit is lowered for this process only while the test holds them.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	var hog []int
	release := func() {
		for _, fd := range hog {
			syscall.Close(fd)
		}
		hog = nil
	}
	defer release()
	low := lim
	low.Cur = 1024
	if lim.Cur < low.Cur {
		t.Skipf("open-file limit %d is already below %d", lim.Cur, low.Cur)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("cannot lower the open-file limit: %v", err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	for {
		fd, err := syscall.Dup(0)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatal(err)
			}
			break
		}
		hog = append(hog, fd)
	}
	waiting := make(chan struct{})
	var once sync.Once
	l.wait = func(d time.Duration, stop <-chan struct{}) bool {
		once.Do(func() { close(waiting) })
		return waitOrStop(d, stop)
	}
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	select {
	case <-waiting:
	case err := <-done:
		t.Fatalf("Accept with no descriptor free returned %v, want it to wait", err)
	}
	release()
	if err := <-done; err != nil {
		t.Fatalf("Accept once descriptors were free: %v", err)
	}
}
