package e2e

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestConcurrentStreams opens 200 client connections through one entry at
// once, each carrying its own pseudo-random payload (0 B to 4 MiB,
// log-uniformly distributed) to a HashEcho backend and back; every byte in
// both directions is checked by SHA-256.
func TestConcurrentStreams(t *testing.T) {
	t.Parallel()
	const (
		conns   = 200
		maxSize = 4 << 20
	)
	r := harness.NewRig(t)
	backend := harness.StartHashEcho(t)
	tun := r.StartTunnel(t, backend.Addr(), harness.Options{}, harness.Options{})

	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("TUNNEL_E2E_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("TUNNEL_E2E_SEED: %v", err)
		}
	}
	t.Logf("payload seed %d (set TUNNEL_E2E_SEED to repeat)", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	sizes := make([]int64, conns)
	var total int64
	for i := range sizes {
		switch i {
		case 0, 1, 2:
			sizes[i] = maxSize
		case 3:
			sizes[i] = 0
		default:
			sizes[i] = int64(math.Exp(rng.Float64() * math.Log(maxSize)))
		}
		total += sizes[i]
	}

	// Every client connects first, so that all 200 streams are open at
	// once, then all exchange their payloads concurrently.
	clients := make([]*net.TCPConn, conns)
	for i := range clients {
		clients[i] = harness.Dial(t, tun.Entry.Addr, 150*time.Second)
	}
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := harness.HashEchoExchange(c, sizes[i], seed+uint64(i)); err != nil {
				failed.Add(1)
				t.Errorf("connection %d (%d bytes): %v", i, sizes[i], err)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	t.Logf("%d connections, %.1f MiB each way in %v: %.1f MiB/s each way (race-built binary: %v)",
		conns, float64(total)/(1<<20), elapsed.Round(time.Millisecond),
		float64(total)/(1<<20)/elapsed.Seconds(), harness.RaceBuild())
	if failed.Load() > 0 {
		t.Fatalf("%d of %d connections failed", failed.Load(), conns)
	}
	if got := backend.Accepted(); got != conns {
		t.Errorf("backend accepted %d connections, want %d", got, conns)
	}
	// All streams share one tunnel session.
	if n := tun.Entry.Count(harness.MessageIs("session established")); n != 1 {
		t.Errorf("entry logged %d \"session established\" lines for %d connections, want 1", n, conns)
	}
	tun.CheckNoErrors(t)
	l := tun.Entry.WaitMessage(t, 1, time.Second, "session established")
	if fp := l.String("peer_fingerprint"); fp != r.Exit.Fingerprint {
		t.Errorf("session established with peer_fingerprint %q, want the exit's %q", fp, r.Exit.Fingerprint)
	}
	if peer := l.String("peer"); peer != tun.Exit.Addr {
		t.Errorf("session established with peer %q, want %q", peer, tun.Exit.Addr)
	}
}

// TestHalfClose checks that closing one direction of a connection is
// carried end to end and leaves the other direction working, both ways.
func TestHalfClose(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)

	t.Run("client closes first", func(t *testing.T) {
		// The backend reads the whole request up to EOF, and only then
		// replies: its digest, then 1 MiB derived from it.
		const replySize = 1 << 20
		backend := harness.StartBackend(t, func(c net.Conn) {
			c.SetDeadline(time.Now().Add(60 * time.Second))
			h := sha256.New()
			if _, err := io.Copy(h, c); err != nil {
				return
			}
			sum := h.Sum(nil)
			c.Write(sum)
			io.Copy(c, io.LimitReader(derived(sum), replySize))
		})
		tun := r.StartTunnel(t, backend.Addr(), harness.Options{}, harness.Options{})
		c := harness.Dial(t, tun.Entry.Addr, 60*time.Second)

		req := make([]byte, 300<<10)
		rand.NewChaCha8([32]byte{1}).Read(req)
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		reply, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("reading the reply after CloseWrite: %v (got %d bytes)", err, len(reply))
		}
		sum := sha256.Sum256(req)
		want := append(sum[:], make([]byte, replySize)...)
		io.ReadFull(derived(sum[:]), want[32:])
		if len(reply) != len(want) {
			t.Fatalf("reply is %d bytes, want %d", len(reply), len(want))
		}
		if !bytes.Equal(reply[:32], sum[:]) {
			t.Fatal("backend's digest of the request differs from the request sent")
		}
		if !bytes.Equal(reply, want) {
			t.Fatal("reply differs from what the backend sent")
		}
		tun.CheckNoErrors(t)
	})

	t.Run("backend closes first", func(t *testing.T) {
		// The backend sends a greeting and closes its write side at once,
		// then reads the client's request up to EOF.
		greeting := []byte("greeting from the backend, then EOF")
		got := make(chan [32]byte, 1)
		backend := harness.StartBackend(t, func(c net.Conn) {
			c.SetDeadline(time.Now().Add(60 * time.Second))
			c.Write(greeting)
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				return
			}
			h := sha256.New()
			if _, err := io.Copy(h, c); err != nil {
				return
			}
			got <- [32]byte(h.Sum(nil))
		})
		tun := r.StartTunnel(t, backend.Addr(), harness.Options{}, harness.Options{})
		c := harness.Dial(t, tun.Entry.Addr, 60*time.Second)

		b, err := io.ReadAll(c) // up to the backend's EOF, with our side still open
		if err != nil || !bytes.Equal(b, greeting) {
			t.Fatalf("read %q, %v; want the greeting and EOF", b, err)
		}
		req := make([]byte, 500<<10)
		rand.NewChaCha8([32]byte{2}).Read(req)
		if _, err := c.Write(req); err != nil {
			t.Fatalf("writing after the backend's EOF: %v", err)
		}
		c.CloseWrite()
		select {
		case sum := <-got:
			if sum != sha256.Sum256(req) {
				t.Fatal("backend received something else than the request sent after its EOF")
			}
			tun.CheckNoErrors(t)
		case <-time.After(60 * time.Second):
			t.Fatal("backend did not receive the request and EOF")
		}
	})
}

// derived returns an endless pseudo-random stream seeded by seed.
func derived(seed []byte) io.Reader {
	var s [32]byte
	copy(s[:], seed)
	return rand.NewChaCha8(s)
}

// roundTrip runs one small HashEcho exchange through addr and describes a
// failure.
func roundTrip(addr string, seed uint64) error {
	if err := harness.Exchange(addr, 64<<10, seed, 30*time.Second); err != nil {
		return fmt.Errorf("round trip through %s: %w", addr, err)
	}
	return nil
}
