package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestExampleConfigs loads each agent's example config file in
// examples/config with the real binary, so that the examples cannot rot:
// --print-config prints the settings in effect from it, and the exit's
// example, with its key paths and addresses overridden from the
// environment (which beats the file), starts and warns that it listens
// on every interface, as the example's listen: 0.0.0.0 does.
func TestExampleConfigs(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	dir := filepath.Join(harness.ModuleRoot(t), "examples", "config")
	for _, role := range []string{"exit", "entry"} {
		cfg := filepath.Join(dir, role+".yaml")
		stdout, stderr, code := harness.Run(t, r.Bin, 30*time.Second, role, "--config", cfg, "--print-config")
		if code != 0 {
			t.Errorf("tunnel %s --config %s --print-config: exit code %d\n%s", role, cfg, code, stderr)
			continue
		}
		for _, want := range []string{role + ":\n", "services:", "key: /etc/tunnel/" + role + ".key", "watch-interval: 5s", "sandbox: true"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("tunnel %s --print-config of %s lacks %q:\n%s", role, cfg, want, stdout)
			}
		}
	}
	// The example's allow: names app1 and app2.
	auth := t.TempDir()
	copyFile(t, r.Entry.Pub, filepath.Join(auth, "app1.pub"), 0o644)
	copyFile(t, harness.NewIdentity(t, r.Bin, "app2").Pub, filepath.Join(auth, "app2.pub"), 0o644)
	x := harness.StartEnv(t, r.Bin, []string{
		"TUNNEL_KEY=" + r.Exit.Key, "TUNNEL_AUTHORIZED_KEYS=" + auth,
		"TUNNEL_LISTEN=0.0.0.0:0", "TUNNEL_STATUS_ADDR=127.0.0.1:0",
	}, "exit", "--config", filepath.Join(dir, "exit.yaml"))
	x.WaitMessage(t, 1, 30*time.Second, "exit ready")
	l := x.WaitLine(t, 1, 5*time.Second, "the warning about every interface", harness.Contains("listens on every interface"))
	if l.String("level") != "warn" {
		t.Errorf("%s: want level warn", l.Raw)
	}
}

// TestCompletionAndHelp: tunnel completion prints a script for each shell
// that names this binary, the binary answers a shell's completion request
// (COMP_LINE) with the flags and their values, and --help shows the
// defaults.
func TestCompletionAndHelp(t *testing.T) {
	t.Parallel()
	bin := harness.Build(t)
	for _, shell := range []string{"bash", "zsh", "fish"} {
		stdout, stderr, code := harness.Run(t, bin, 30*time.Second, "completion", shell)
		if code != 0 || !strings.Contains(stdout, bin) {
			t.Errorf("tunnel completion %s: code %d, stdout %q, stderr %q; want a script that runs %s", shell, code, stdout, stderr, bin)
		}
	}
	for line, want := range map[string]string{
		"tunnel exit --watch":       "--watch-interval",
		"tunnel ent":                "entry",
		"tunnel entry --log-level ": "debug",
		"tunnel completion ":        "fish",
	} {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "COMP_LINE="+line)
		out, err := cmd.Output()
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("COMP_LINE=%q: %v, %q; want %q among the completions", line, err, out, want)
		}
	}
	stdout, _, _ := harness.Run(t, bin, 30*time.Second, "exit", "--help")
	for _, want := range []string{"Default :7000", "--watch-interval=5s", "--dial-timeout=5s", "On by default", "--print-config"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("tunnel exit --help lacks %q", want)
		}
	}
}
