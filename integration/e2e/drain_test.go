package e2e

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestDrain stops one agent with SIGTERM while a connection is in the
// middle of an exchange: the connection finishes intact, a new connection
// is not served, and the agent then exits with code 0.
func TestDrain(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	for _, role := range []string{"entry", "exit"} {
		t.Run(role, func(t *testing.T) {
			backend := harness.StartHashEcho(t)
			tun := r.StartTunnel(t, backend.Addr(), harness.Options{}, harness.Options{})
			stopping := tun.Entry
			if role == "exit" {
				stopping = tun.Exit
			}

			c := harness.Dial(t, tun.Entry.Addr, 60*time.Second)
			rng := rand.NewChaCha8([32]byte{byte(len(role))})
			part1, part2 := make([]byte, 200<<10), make([]byte, 300<<10)
			rng.Read(part1)
			rng.Read(part2)
			if _, err := c.Write(part1); err != nil {
				t.Fatal(err)
			}
			echo := make([]byte, len(part1))
			if _, err := io.ReadFull(c, echo); err != nil || !bytes.Equal(echo, masked(part1)) {
				t.Fatalf("first half: %v, echo correct: %v", err, bytes.Equal(echo, masked(part1)))
			}

			if err := stopping.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			stopping.WaitLog(t, "shutting down", 10*time.Second)

			// A new connection is not carried any more.
			if err := harness.Exchange(tun.Entry.Addr, 1000, 5, 20*time.Second); err == nil {
				t.Errorf("a connection opened after SIGTERM to the %s was carried", role)
			} else {
				t.Logf("new connection during the drain: %v", err)
			}

			// The open one finishes.
			if _, err := c.Write(part2); err != nil {
				t.Fatalf("writing the second half during the drain: %v", err)
			}
			c.CloseWrite()
			rest, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("reading during the drain: %v (%d bytes)", err, len(rest))
			}
			sum := sha256.Sum256(append(part1, part2...))
			if want := append(masked(part2), sum[:]...); !bytes.Equal(rest, want) {
				t.Fatalf("during the drain got %d bytes, want %d (the echo and the digest)", len(rest), len(want))
			}
			c.Close()
			if code := stopping.Wait(30 * time.Second); code != 0 {
				t.Fatalf("%s exited with code %d after draining, want 0", role, code)
			}
		})
	}
}

// masked returns b XORed with harness.EchoMask, as HashEcho sends it back.
func masked(b []byte) []byte {
	out := make([]byte, len(b))
	for i, x := range b {
		out[i] = x ^ harness.EchoMask
	}
	return out
}
