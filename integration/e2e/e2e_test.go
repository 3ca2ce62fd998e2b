// Package e2e runs the real tunnel binary end to end: keys made with
// "tunnel keygen", an exit agent in front of a real backend and an entry
// agent in front of the test's clients, each a separate process talking
// over loopback TCP. Agents are started with --listen 127.0.0.1:0 and their
// ports are read from the "listening" log line (see the log contract).
package e2e

import (
	"net"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// keys are the files and fingerprints of one entry and one exit identity.
type keys struct {
	entryKey, entryPub, entryFP string
	exitKey, exitPub, exitFP    string
}

func newKeys(t *testing.T, bin string) keys {
	t.Helper()
	dir := t.TempDir()
	var k keys
	k.entryKey, k.entryPub, k.entryFP = harness.Keygen(t, bin, dir, "entry")
	k.exitKey, k.exitPub, k.exitFP = harness.Keygen(t, bin, dir, "exit")
	if k.entryFP == k.exitFP {
		t.Fatalf("keygen made two keys with the same fingerprint %s", k.entryFP)
	}
	return k
}

// startExit starts an exit agent listening on listen (e.g. "127.0.0.1:0")
// that forwards to backend and accepts the entry keys in authorized.
func startExit(t *testing.T, bin, listen, backend, key, authorized string, extra ...string) *harness.Proc {
	t.Helper()
	args := append([]string{"exit", "--listen", listen, "--forward", backend,
		"--key", key, "--authorized-keys", authorized}, extra...)
	return harness.Start(t, bin, args...)
}

// startEntry starts an entry agent on 127.0.0.1:0 that dials peer and pins
// peerKey.
func startEntry(t *testing.T, bin, peer, key, peerKey string, extra ...string) *harness.Proc {
	t.Helper()
	args := append([]string{"entry", "--listen", "127.0.0.1:0", "--peer", peer,
		"--key", key, "--peer-key", peerKey}, extra...)
	return harness.Start(t, bin, args...)
}

// tunnelPair is a running exit and entry with matching keys.
type tunnelPair struct {
	keys
	exit, entry         *harness.Proc
	exitAddr, entryAddr string
}

// startPair starts an exit forwarding to backend, with exitFlags added,
// and an entry dialing it, with fresh keys, and waits for both to listen.
func startPair(t *testing.T, bin, backend string, exitFlags ...string) *tunnelPair {
	t.Helper()
	p := &tunnelPair{keys: newKeys(t, bin)}
	p.exit = startExit(t, bin, "127.0.0.1:0", backend, p.exitKey, p.entryPub, exitFlags...)
	p.exitAddr = p.exit.ListenAddr(t)
	checkListening(t, p.exit, "exit")
	p.entry = startEntry(t, bin, p.exitAddr, p.entryKey, p.exitPub)
	p.entryAddr = p.entry.ListenAddr(t)
	checkListening(t, p.entry, "entry")
	return p
}

// checkListening checks the "listening" line's role field.
func checkListening(t *testing.T, p *harness.Proc, role string) {
	t.Helper()
	l := p.WaitLine(t, 1, 30*time.Second, "listening", harness.MessageIs("listening"))
	if got := l.String("role"); got != role {
		t.Errorf("listening line has role %q, want %q: %s", got, role, l.Raw)
	}
}

// dial connects to addr with a deadline for the whole exchange.
func dial(t *testing.T, addr string, timeout time.Duration) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(timeout))
	return c.(*net.TCPConn)
}

// exchange runs one HashEcho exchange of size bytes through addr.
func exchange(addr string, size int64, seed uint64, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	return harness.HashEchoExchange(c.(*net.TCPConn), size, seed)
}
