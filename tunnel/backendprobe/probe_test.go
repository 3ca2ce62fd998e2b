package backendprobe

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// TestBackendProbe: however often readiness is asked, the backend sees at most one probe per
// Every; a failure is kept until then; a stream's successful dial makes a probe needless.
func TestBackendProbe(t *testing.T) {
	p := New("backend:1", time.Second)
	dials := 0
	var fail error
	p.dial = func(context.Context, string, string) (net.Conn, error) {
		dials++
		if fail != nil {
			return nil, fail
		}
		c1, c2 := net.Pipe()
		c2.Close()
		return c1, nil
	}
	ctx := context.Background()
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }

	for i := range 10 {
		if err := p.Check(ctx, at(time.Duration(i)*400*time.Millisecond)); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
	if dials != 1 {
		t.Fatalf("10 checks within 4s made %d probe dials, want 1", dials)
	}
	if err := p.Check(ctx, at(5*time.Second)); err != nil || dials != 2 {
		t.Fatalf("check after Every: %v, %d dials; want nil, 2", err, dials)
	}

	fail = errors.New("connection refused")
	if err := p.Check(ctx, at(10*time.Second)); err == nil || !strings.Contains(err.Error(), "backend backend:1 does not accept connections: connection refused") {
		t.Fatalf("check with the backend down: %v", err)
	}
	if err := p.Check(ctx, at(12*time.Second)); err == nil || dials != 3 {
		t.Fatalf("check 2s after a failed probe: %v, %d dials; want the kept failure, 3", err, dials)
	}

	// A stream's dial that succeeded answers without a probe.
	p.Accepted(at(13 * time.Second))
	if err := p.Check(ctx, at(14*time.Second)); err != nil || dials != 3 {
		t.Fatalf("check after a stream's dial: %v, %d dials; want nil, 3", err, dials)
	}
	if err := p.Check(ctx, at(18*time.Second)); err == nil || dials != 4 {
		t.Fatalf("check 5s after the stream's dial, backend down: %v, %d dials; want an error, 4", err, dials)
	}
}
