package realclients

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// commandTimeout bounds every client command. The longest, pgbench with
// 4,000 transactions through a race-built tunnel, takes seconds.
const commandTimeout = 3 * time.Minute

// startTunnel starts an exit forwarding to backend and an entry dialing it,
// with fresh keys, waits until the entry has its session, and returns the
// entry's address, which the clients use in place of backend's.
func startTunnel(t *testing.T, bin, backend string) string {
	t.Helper()
	dir := t.TempDir()
	entryKey, entryPub, _ := harness.Keygen(t, bin, dir, "entry")
	exitKey, exitPub, _ := harness.Keygen(t, bin, dir, "exit")
	exit := harness.Start(t, bin, "exit", "--listen", "127.0.0.1:0", "--forward", backend,
		"--key", exitKey, "--authorized-keys", entryPub)
	entry := harness.Start(t, bin, "entry", "--listen", "127.0.0.1:0", "--peer", exit.ListenAddr(t),
		"--key", entryKey, "--peer-key", exitPub)
	addr := entry.ListenAddr(t)
	entry.WaitLine(t, 1, 30*time.Second, `"session established"`, harness.MessageIs("session established"))
	t.Cleanup(func() {
		// Every client saw clean answers; the agents must not have seen
		// anything worse than a warning either.
		for _, p := range []*harness.Proc{entry, exit} {
			if n := p.Count(harness.Level("error")); n > 0 {
				t.Errorf("an agent logged %d error lines:\n%s", n, p.LogText())
			}
		}
	})
	return addr
}

// run runs name with args, env added to the environment and stdin, and
// returns its stdout and stderr. It fails the test when the command fails or is still
// running after commandTimeout, showing its output.
func run(t *testing.T, env []string, stdin []byte, name string, args ...string) (stdout, stderr []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var outBuf, errBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &outBuf, &errBuf
	err := cmd.Run()
	if ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err,
			clipText(outBuf.String()), clipText(errBuf.String()))
	}
	return outBuf.Bytes(), errBuf.Bytes()
}

// clipText keeps the end of a long command output for a failure message.
func clipText(s string) string {
	const keep = 8 << 10
	if len(s) > keep {
		return "...\n" + s[len(s)-keep:]
	}
	return s
}

// lookPath finds a client program, skipping the test (failing it in CI)
// when it is not installed.
func lookPath(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	harness.RequireOrSkip(t, name+" (Debian package "+pkg+")", err == nil)
	return p
}

// outOnly returns the first of run's results, the standard output.
func outOnly(out, _ []byte) []byte { return out }
