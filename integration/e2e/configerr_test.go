package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestConfigFileErrors runs the binary on --config files with a mistake
// in them and checks the one line it prints before exiting 2: a JSON log
// line at level fatal (the logs are JSON, as on any non-terminal), whose
// message names the file and the line in the whole file (not in the
// services: block), the key as the file writes it (not a Go type), and
// does not start with "tunnel: ".
func TestConfigFileErrors(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	dir := t.TempDir()
	head := fmt.Sprintf("# an exit in front of two backends\nkey: %s\nauthorized-keys: %s\n\nexit:\n  listen: 127.0.0.1:0\n",
		r.Exit.Key, r.Entry.Pub)
	for _, tc := range []struct {
		name, body string
		line       int
		want       string
	}{
		{"misspelt service field", "  services:\n    cache:\n      forward: 127.0.0.1:6379\n    db:\n      forwrd: 127.0.0.1:5432\n",
			11, `exit.services.db: unknown field "forwrd" (did you mean "forward"?)`},
		{"duration without unit", "  forward: 127.0.0.1:9\n  dial-timeout: 3\n", 8, "exit.dial-timeout: 3: a duration needs a unit"},
		{"bad backend", "  dial-timeout: 3s\n  forward: nope\n", 8, `exit.forward: "nope" is not host:port`},
		{"unknown key", "  forward: 127.0.0.1:9\n  drain-timout: 5s\n", 8, `exit: unknown key "drain-timout" (did you mean "drain-timeout"?)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".yaml")
			if err := os.WriteFile(cfg, []byte(head+tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, stderr, code := harness.Run(t, r.Bin, 30*time.Second, "exit", "--config", cfg)
			if code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			var l map[string]any
			if len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &l) != nil {
				t.Fatalf("stderr is not one JSON line:\n%s", stderr)
			}
			want := fmt.Sprintf("%s:%d: %s", cfg, tc.line, tc.want)
			if msg, _ := l["message"].(string); !strings.HasPrefix(msg, want) || l["level"] != "fatal" {
				t.Errorf("line %s\nwant level fatal and a message starting %q", lines[0], want)
			}
			if l["line"] != float64(tc.line) || l["config_file"] != cfg {
				t.Errorf("line %s: want fields config_file %q and line %d", lines[0], cfg, tc.line)
			}
			if strings.Contains(stderr, "tunnel: ") || strings.Contains(stderr, "main.") {
				t.Errorf("line %s names the program or a Go type", lines[0])
			}
		})
	}
}
