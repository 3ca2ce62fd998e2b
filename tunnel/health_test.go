package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/tunnel/status"
)

// get returns the status code and body of GET url.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestReadyz: /healthz is always 200; /readyz follows the entry's session and the exit's
// backend.
func TestReadyz(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	// A backend that is gone: its port refuses, and stays taken, so that
	// no listener of this test binary gets it meanwhile.
	goneAddr := refusingAddr(t)
	for _, tc := range []struct {
		name    string
		backend string
		exit    int
	}{
		{"backend up", echoBackend(t), http.StatusOK},
		{"backend down", goneAddr, http.StatusServiceUnavailable},
	} {
		a := start(t, tc.backend)
		status := func(ready func(context.Context) error) string {
			ln := loopback(t)
			stop := status.Serve(ln, zerolog.Nop(), status.Config{Stats: func() any { return a.exit.Stats() }, Ready: ready})
			t.Cleanup(stop)
			return "http://" + ln.Addr().String()
		}
		exitURL, entryURL := status(a.exit.Ready), status(a.entry.Ready)

		if code, body := get(t, exitURL+"/readyz"); code != tc.exit {
			t.Errorf("%s: exit /readyz = %d %q, want %d", tc.name, code, body, tc.exit)
		} else if code != http.StatusOK && !strings.Contains(body, "not ready: backend "+goneAddr+" does not accept connections") {
			t.Errorf("%s: exit /readyz body %q does not say why", tc.name, body)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			code, body := get(t, entryURL+"/readyz")
			if code == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: entry /readyz = %d %q after 10s, want 200 once its session is up", tc.name, code, body)
			}
			time.Sleep(20 * time.Millisecond)
		}
		a.stopExit()
		for {
			code, body := get(t, entryURL+"/readyz")
			if code == http.StatusServiceUnavailable && strings.Contains(body, "not ready: no session with the exit") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: entry /readyz = %d %q with the exit gone, want 503 and the reason", tc.name, code, body)
			}
			time.Sleep(20 * time.Millisecond)
		}
		for _, u := range []string{exitURL, entryURL} {
			if code, _ := get(t, u+"/healthz"); code != http.StatusOK {
				t.Errorf("%s: %s/healthz = %d, want 200 always", tc.name, u, code)
			}
		}
	}
}

// TestAttempted: Attempted waits for the entry's first attempt to reach the exit, which only
// Serve makes, and returns once it has ended, with a session or a failure.
func TestAttempted(t *testing.T) {
	ks := testKeys()
	ns := EntrySettings{}
	ns.Peers = []string{"127.0.0.1:1"}
	idle, err := NewEntry(EntryConfig{Settings: ns, Key: ks[0], PeerKey: &ks[1].PublicKey}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := idle.Attempted(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Attempted before Serve = %v, want the context's deadline (no attempt is made)", err)
	}

	gone := loopback(t)
	goneAddr := gone.Addr().String()
	gone.Close()
	failing, _ := runEntry(t, goneAddr, nil, nil, nil)
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := failing.Attempted(ctx); err != nil {
		t.Fatalf("Attempted with the exit gone = %v, want nil once the dial has failed", err)
	}
	if err := failing.Ready(ctx); err == nil || !strings.Contains(err.Error(), "no session with the exit: ") {
		t.Errorf("Ready after the failed attempt = %v, want the dial's error", err)
	}

	a := start(t, echoBackend(t))
	if err := a.entry.Attempted(ctx); err != nil {
		t.Fatalf("Attempted with the exit up = %v, want nil once the session is up", err)
	}
	if err := a.entry.Ready(ctx); err != nil {
		t.Errorf("Ready after the first attempt, exit up: %v", err)
	}
}

// refusingAddr returns a loopback address whose port is bound by a socket
// that does not listen: a connection to it is refused, and no other
// listener can take the port until the test ends.
func refusingAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}
