package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// sandboxRig makes an exit whose private key and authorized keys live in
// directories of their own (keyDir/exit.key, authDir/*.pub), as the
// sandbox's read rules are by directory.
func sandboxRig(t *testing.T) (r *harness.Rig, keyDir, authDir string) {
	t.Helper()
	r = harness.NewRig(t)
	keyDir, authDir = t.TempDir(), t.TempDir()
	copyFile(t, r.Exit.Key, filepath.Join(keyDir, "exit.key"), 0o600)
	copyFile(t, r.Entry.Pub, filepath.Join(authDir, "entry.pub"), 0o644)
	return r, keyDir, authDir
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// requireLandlock skips the test where the kernel has no Landlock with
// network rules (ABI 4), which the sandbox would then not enforce.
func requireLandlock(t *testing.T, agent *harness.Agent) harness.Line {
	t.Helper()
	l := agent.WaitLine(t, 1, 30*time.Second, "a sandbox line", harness.Contains("sandbox"))
	abi, _ := l.Fields["landlock_abi"].(float64)
	harness.RequireOrSkip(t, "Landlock with network rules (ABI 4, Linux 6.7)", abi >= 4)
	return l
}

// reloadError sends SIGHUP and returns the error of the "reload failed"
// line that follows (the n-th of the agent).
func reloadError(t *testing.T, a *harness.Agent, n int) string {
	t.Helper()
	if err := a.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	l := a.WaitLine(t, n, 30*time.Second, "a reload line", harness.Contains("reload"))
	if l.Message() != "reload failed; the previous keys stay in force" {
		t.Fatalf("after SIGHUP: %s, want a failed reload", l.Raw)
	}
	return l.String("error")
}

// TestSandbox runs the agents with their default sandbox and checks from
// outside what the running exit may no longer do, on the paths it really
// takes: a SIGHUP reload reads key files through links placed in its key
// directories, to /etc/shadow and to a valid public key elsewhere, and is
// refused with "permission denied" (without the sandbox, root reads both,
// and the second reload succeeds), while a key added to its directory is
// taken up and traffic flows. The kernel's no_new_privs flag, which
// Landlock sets, is on in /proc, and the agent's own probes after
// restricting itself (list /, bind a port it was not given, connect to
// one it was not given) were denied.
func TestSandbox(t *testing.T) {
	t.Parallel()
	r, keyDir, authDir := sandboxRig(t)
	backend := harness.StartHashEcho(t)
	exitArgs := []string{"--key", filepath.Join(keyDir, "exit.key"), "--authorized-keys", authDir}
	tun := &harness.Tunnel{Exit: r.StartExit(t, backend.Addr(), harness.Options{Status: true, Args: exitArgs})}
	tun.Entry = r.StartEntry(t, tun.Exit.Addr, harness.Options{Status: true})
	tun.Entry.WaitMessage(t, 1, 30*time.Second, "session established")
	for _, a := range []*harness.Agent{tun.Exit, tun.Entry} {
		l := requireLandlock(t, a)
		if l.Message() != "sandbox on" {
			t.Errorf("%s: %s, want \"sandbox on\"", a.Role, l.Raw)
		}
		denied, _ := l.Fields["denied"].([]any)
		if len(denied) != 3 {
			t.Errorf("%s: the sandbox's own probes denied %v, want reading /, binding and connecting", a.Role, denied)
		}
		status, err := os.ReadFile(filepath.Join("/proc", itoa(a.Pid()), "status"))
		if err != nil || !strings.Contains(string(status), "NoNewPrivs:\t1") {
			t.Errorf("%s: /proc/%d/status has no \"NoNewPrivs: 1\" (%v)", a.Role, a.Pid(), err)
		}
	}
	if err := roundTrip(tun.Entry.Addr, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := tun.Exit.Get("/metrics"); err != nil {
		t.Errorf("metrics under the sandbox: %v", err)
	}

	// A link in the authorized keys' directory to /etc/shadow.
	reloads := 0
	if _, err := os.Stat("/etc/shadow"); err == nil {
		link := filepath.Join(authDir, "shadow.pub")
		if err := os.Symlink("/etc/shadow", link); err != nil {
			t.Fatal(err)
		}
		reloads++
		if e := reloadError(t, tun.Exit, reloads); !strings.Contains(e, "permission denied") {
			t.Errorf("reload through a link to /etc/shadow: %q, want permission denied", e)
		}
		os.Remove(link)
	}
	// A link to a valid public key outside the directories it names.
	outside := harness.NewIdentity(t, r.Bin, "outside")
	link := filepath.Join(authDir, "outside.pub")
	if err := os.Symlink(outside.Pub, link); err != nil {
		t.Fatal(err)
	}
	reloads++
	if e := reloadError(t, tun.Exit, reloads); !strings.Contains(e, "permission denied") {
		t.Errorf("reload through a link to %s: %q, want permission denied", outside.Pub, e)
	}
	os.Remove(link)
	// The private key replaced by a link to /etc/shadow.
	if _, err := os.Stat("/etc/shadow"); err == nil {
		key := filepath.Join(keyDir, "exit.key")
		if err := os.Rename(key, key+".old"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/etc/shadow", key); err != nil {
			t.Fatal(err)
		}
		reloads++
		if e := reloadError(t, tun.Exit, reloads); !strings.Contains(e, "permission denied") {
			t.Errorf("reload of --key through a link to /etc/shadow: %q, want permission denied", e)
		}
		os.Remove(key)
		if err := os.Rename(key+".old", key); err != nil {
			t.Fatal(err)
		}
	}
	// What the sandbox allows still works: a key added to the directory.
	copyFile(t, outside.Pub, filepath.Join(authDir, "outside.pub"), 0o644)
	if err := tun.Exit.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	l := tun.Exit.WaitMessage(t, 1, 30*time.Second, "keys reloaded")
	if !strings.Contains(l.Raw, outside.Fingerprint) {
		t.Errorf("reload of an added key: %s, want %s added", l.Raw, outside.Fingerprint)
	}
	if err := roundTrip(tun.Entry.Addr, 2); err != nil {
		t.Fatal(err)
	}
}

// TestSandboxOff: --sandbox=false leaves the agent unrestricted: a link to
// a key outside its directories is read on reload.
func TestSandboxOff(t *testing.T) {
	t.Parallel()
	r, keyDir, authDir := sandboxRig(t)
	x := r.StartExit(t, "127.0.0.1:9", harness.Options{Args: []string{
		"--key", filepath.Join(keyDir, "exit.key"), "--authorized-keys", authDir, "--sandbox=false"}})
	x.WaitMessage(t, 1, 30*time.Second, "exit ready")
	if n := x.Count(harness.Contains("sandbox")); n != 0 {
		t.Errorf("--sandbox=false: %d lines about a sandbox", n)
	}
	outside := harness.NewIdentity(t, r.Bin, "outside")
	if err := os.Symlink(outside.Pub, filepath.Join(authDir, "outside.pub")); err != nil {
		t.Fatal(err)
	}
	if err := x.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if l := x.WaitLine(t, 1, 30*time.Second, "a reload line", harness.Contains("reload")); !strings.Contains(l.Raw, outside.Fingerprint) {
		t.Errorf("--sandbox=false: %s, want %s added", l.Raw, outside.Fingerprint)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
