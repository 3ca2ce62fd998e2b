package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestConfigSources runs agents configured from a --config YAML file and
// TUNNEL_* environment variables, and checks the precedence flag > env >
// file on --listen through the address the agent reports.
func TestConfigSources(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	bin := r.Bin
	backend := harness.StartHashEcho(t)
	filePort, envPort := harness.FreePort(t), harness.FreePort(t)
	fileAddr := fmt.Sprintf("127.0.0.1:%d", filePort)
	envAddr := fmt.Sprintf("127.0.0.1:%d", envPort)

	// Keys at the top level, the rest under "exit:".
	cfg := filepath.Join(t.TempDir(), "exit.yaml")
	yaml := fmt.Sprintf("key: %q\nauthorized-keys: %q\nexit:\n  listen: %q\n  forward: %q\n",
		r.Exit.Key, r.Entry.Pub, fileAddr, backend.Addr())
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}

	fileOnly := harness.Start(t, bin, "exit", "--config", cfg)
	if got := fileOnly.ListenAddr(t); got != fileAddr {
		t.Errorf("config file only: listening on %s, want %s from the file", got, fileAddr)
	}
	fileOnly.Stop(t, 30*time.Second)

	fileAndEnv := harness.StartEnv(t, bin, []string{"TUNNEL_LISTEN=" + envAddr}, "exit", "--config", cfg)
	if got := fileAndEnv.ListenAddr(t); got != envAddr {
		t.Errorf("file and TUNNEL_LISTEN: listening on %s, want %s from the environment", got, envAddr)
	}
	fileAndEnv.Stop(t, 30*time.Second)

	all := harness.StartEnv(t, bin, []string{"TUNNEL_LISTEN=" + envAddr}, "exit", "--config", cfg, "--listen", "127.0.0.1:0")
	exitAddr := all.ListenAddr(t)
	if exitAddr == envAddr || exitAddr == fileAddr {
		t.Errorf("file, env and --listen 127.0.0.1:0: listening on %s, want the flag's free port", exitAddr)
	}

	// An entry configured by the environment alone carries traffic to it.
	entry := harness.StartEnv(t, bin, []string{
		"TUNNEL_LISTEN=127.0.0.1:0", "TUNNEL_PEER=" + exitAddr,
		"TUNNEL_KEY=" + r.Entry.Key, "TUNNEL_PEER_KEY=" + r.Exit.Pub,
	}, "entry")
	if err := roundTrip(entry.ListenAddr(t), 3); err != nil {
		t.Fatalf("entry configured by environment: %v", err)
	}
}
