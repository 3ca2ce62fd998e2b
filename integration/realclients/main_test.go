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

// clean are the options of both agents: every client sees clean answers,
// so the agents must not log anything worse than a warning either.
var clean = harness.Options{NoErrors: true}

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
