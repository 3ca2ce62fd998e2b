package exits

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/handshake"
)

// TestResolve: an IP literal is taken as it is, a name stands for each of
// its addresses, duplicates are dropped, and a name that does not resolve
// is a *DialError for its peer while the others are still returned.
func TestResolve(t *testing.T) {
	lookup := func(_ context.Context, host string) ([]string, error) {
		switch host {
		case "exits.local":
			return []string{"10.0.0.2", "10.0.0.3", "10.0.0.1"}, nil
		case "empty.local":
			return nil, nil
		}
		return nil, fmt.Errorf("no such host %s", host)
	}
	peers := []string{"10.0.0.1:7000", "exits.local:7000", "missing.local:7000", "empty.local:7000"}
	got, errs := Resolve(context.Background(), peers, time.Second, lookup)
	want := []Addr{
		{"10.0.0.1:7000", "10.0.0.1:7000"},
		{"exits.local:7000", "10.0.0.2:7000"},
		{"exits.local:7000", "10.0.0.3:7000"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Resolve = %v, want %v", got, want)
	}
	if len(errs) != 2 {
		t.Fatalf("Resolve errors %v, want one for missing.local and one for empty.local", errs)
	}
	for i, peer := range []string{"missing.local:7000", "empty.local:7000"} {
		var xe *Error
		var de *DialError
		if !errors.As(errs[i], &xe) || xe.Exit.Peer != peer || !errors.As(errs[i], &de) {
			t.Errorf("error %d = %v, want an *Error for %s wrapping a *DialError", i, errs[i], peer)
		}
	}
}

// TestRotateAfter: the exit just left comes last; an unknown address
// leaves the order alone.
func TestRotateAfter(t *testing.T) {
	abc := func() []Addr { return []Addr{{Addr: "a"}, {Addr: "b"}, {Addr: "c"}} }
	if got := RotateAfter(abc(), "a"); !reflect.DeepEqual(got, []Addr{{Addr: "b"}, {Addr: "c"}, {Addr: "a"}}) {
		t.Errorf("RotateAfter(a) = %v", got)
	}
	if got := RotateAfter(abc(), "x"); !reflect.DeepEqual(got, abc()) {
		t.Errorf("RotateAfter(x) = %v", got)
	}
}

// TestLasting: Attempts is lasting only when each of its errors is.
func TestLasting(t *testing.T) {
	key := &Error{Exit: Addr{Addr: "a"}, Err: handshake.ErrUnknownKey}
	dial := &Error{Exit: Addr{Addr: "b"}, Err: &DialError{Err: errors.New("refused")}}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{Attempts{}, false},
		{Attempts{key}, true},
		{Attempts{key, dial}, false},
		{Attempts{key, key}, true},
	} {
		if got := Lasting(tc.err); got != tc.want {
			t.Errorf("Lasting(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestReachStaggers: an exit whose dial never answers delays the next by
// dialStagger only, a failed establish moves on to the next exit, and the
// abandoned dial is cancelled once one succeeds.
func TestReachStaggers(t *testing.T) {
	abandoned := make(chan error, 1)
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		if addr == "silent" {
			<-ctx.Done()
			abandoned <- ctx.Err()
			return nil, ctx.Err()
		}
		c, s := net.Pipe()
		s.Close()
		return c, nil
	}
	exits := []Addr{{Addr: "silent"}, {Addr: "refuses"}, {Addr: "good"}}
	start := time.Now()
	got, errs := Reach(context.Background(), exits, dial, func(x Addr, c net.Conn) (string, error) {
		c.Close()
		if x.Addr == "refuses" {
			return "", handshake.ErrUnknownKey
		}
		return x.Addr, nil
	})
	if got != "good" || len(errs) != 1 || !errors.Is(errs[0], handshake.ErrUnknownKey) {
		t.Fatalf("Reach = %q, %v; want good after one refusal", got, errs)
	}
	if d := time.Since(start); d > 5*dialStagger {
		t.Errorf("Reach took %v past a silent exit, want about %v", d, dialStagger)
	}
	select {
	case err := <-abandoned:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the silent dial ended with %v, want it cancelled", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the silent dial still runs 5s after Reach returned")
	}
}
