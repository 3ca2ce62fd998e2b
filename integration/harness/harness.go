// Package harness runs the real tunnel binary in end-to-end tests. A test
// starts from a Rig: the binary, built once per test process, and an entry
// and an exit key pair made with it. The Rig starts agents (StartExit,
// StartEntry, or both at once with StartTunnel), whose JSON log lines and
// status endpoint the test then reads, and the package provides real
// servers to put behind the exit (TCP backends, PostgreSQL, Redis):
//
//	r := harness.NewRig(t)
//	backend := harness.StartHashEcho(t)
//	tun := r.StartTunnel(t, backend.Addr(), harness.Options{}, harness.Options{})
//	if err := harness.Exchange(tun.Entry.Addr, 1<<20, 1, time.Minute); err != nil {
//		t.Fatal(err)
//	}
//
// Every helper takes a testing.TB, fails or skips through it, and registers
// its own cleanup with t.Cleanup, so a test never has to stop anything by
// hand. A package's TestMain calls Main to remove the binary afterwards.
// The package uses the standard library only.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// built is the result of building ./cmd/tunnel, computed once per test
// process by Build; the directory holding it is removed by Main.
var built struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// Build compiles ./cmd/tunnel of the module that contains the current
// working directory (a test runs in its package directory) and returns the
// path of the binary. It builds once per test process; later calls return
// the same path. The binary is built with -race when the test binary is
// (see RaceBuild). A build failure fails every test that calls Build.
func Build(t testing.TB) string {
	t.Helper()
	built.once.Do(func() {
		built.path, built.dir, built.err = build()
	})
	if built.err != nil {
		t.Fatalf("harness: building tunnel: %v", built.err)
	}
	return built.path
}

func build() (path, dir string, err error) {
	root, err := moduleRoot()
	if err != nil {
		return "", "", err
	}
	dir, err = os.MkdirTemp("", "tunnel-e2e-bin-")
	if err != nil {
		return "", "", err
	}
	path = filepath.Join(dir, "tunnel")
	args := []string{"build", "-o", path}
	if RaceBuild() {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/tunnel")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return "", "", fmt.Errorf("go %s in %s: %v\n%s", strings.Join(args, " "), root, err, out)
	}
	return path, dir, nil
}

// RaceBuild reports whether Build compiles the binary with -race: by default
// when the tests themselves run with -race, so data races in the agents
// surface under real load. TUNNEL_E2E_RACE=0 or =1 overrides the default.
func RaceBuild() bool {
	if v, err := strconv.ParseBool(os.Getenv("TUNNEL_E2E_RACE")); err == nil {
		return v
	}
	return raceEnabled
}

// Main runs the tests of a package and then removes the binary built by
// Build. Use it from TestMain: func TestMain(m *testing.M) { harness.Main(m) }.
// Without it the binary stays in the system temporary directory.
func Main(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// ModuleRoot returns the directory of the module's go.mod, found from the
// working directory (a test runs in its package directory).
func ModuleRoot(t testing.TB) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	return root
}

// moduleRoot walks up from the working directory to the directory holding
// go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// goTool returns the go command of the toolchain running the tests.
func goTool() string {
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			return p
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// InCI reports whether the tests run in CI (environment CI set to a true
// value such as "true" or "1").
func InCI() bool {
	v, _ := strconv.ParseBool(os.Getenv("CI"))
	return v
}

// RequireOrSkip skips the test when ok is false, naming what is missing, or
// fails it when running in CI (see InCI), where every dependency must be
// present.
func RequireOrSkip(t testing.TB, what string, ok bool) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("%s is required but not available (CI is set, so this fails instead of skipping)", what)
	}
	t.Skipf("skipping: %s is not available (install it to run this test; in CI it is required)", what)
}

// Keygen runs "tunnel keygen" to write dir/name.key and dir/name.pub and
// returns their paths and the fingerprint ("SHA256:...") the command
// printed. It makes 2048-bit keys, the smallest the protocol allows, to keep
// tests fast.
func Keygen(t testing.TB, bin, dir, name string) (keyPath, pubPath, fingerprint string) {
	t.Helper()
	out := filepath.Join(dir, name)
	stdout, stderr, code := Run(t, bin, time.Minute, "keygen", "--out", out, "--bits", "2048")
	if code != 0 {
		t.Fatalf("tunnel keygen --out %s: exit code %d\nstderr:\n%s", out, code, stderr)
	}
	fingerprint = strings.TrimSpace(stdout)
	if !strings.HasPrefix(fingerprint, "SHA256:") || strings.ContainsAny(fingerprint, " \n") {
		t.Fatalf("tunnel keygen --out %s: stdout %q is not one SHA256:... fingerprint", out, stdout)
	}
	keyPath, pubPath = out+".key", out+".pub"
	for _, p := range []string{keyPath, pubPath} {
		if !fileExists(p) {
			t.Fatalf("tunnel keygen --out %s did not write %s", out, p)
		}
	}
	return keyPath, pubPath, fingerprint
}

// Run runs the binary with args to completion and returns its stdout,
// stderr and exit code (-1 when killed by a signal). It fails the test if
// the command cannot start, has not exited after timeout, or reported a data
// race or crashed (see Start). Unlike Start it
// adds no flags.
func Run(t testing.TB, bin string, timeout time.Duration, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var outBuf, errBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &outBuf, &errBuf
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: still running after %v\nstdout:\n%s\nstderr:\n%s",
			bin, strings.Join(args, " "), timeout, outBuf.String(), errBuf.String())
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("%s %s: %v", bin, strings.Join(args, " "), err)
	}
	for _, line := range strings.Split(errBuf.String(), "\n") {
		if isCrashLine(line) {
			t.Errorf("%s %s reported a data race or crashed:\n%s", bin, strings.Join(args, " "), errBuf.String())
			break
		}
	}
	return outBuf.String(), errBuf.String(), cmd.ProcessState.ExitCode()
}
