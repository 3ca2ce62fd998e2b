package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runCmd runs the command in-process and returns its exit code, stdout and stderr.
func runCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb, nil)
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, path, data string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestHelp(t *testing.T) {
	code, out, _ := runCmd(t, "--help")
	if code != 0 {
		t.Fatalf("--help exit code %d", code)
	}
	for _, cmd := range []string{"keygen", "fingerprint", "version", "exit", "entry", "demo", "--log-level", "--log-format", "--config"} {
		if !strings.Contains(out, cmd) {
			t.Errorf("--help does not mention %s:\n%s", cmd, out)
		}
	}
	code, out, _ = runCmd(t, "exit", "--help")
	if code != 0 {
		t.Fatalf("exit --help exit code %d", code)
	}
	for _, flag := range []string{"--listen=ADDR", "--forward", "--key", "--authorized-keys", "--dial-timeout=5s",
		"--handshake-timeout=10s", "--max-handshakes=64", "--max-streams=4096", "--keepalive=15s",
		"--window=1048576", "--drain-timeout=30s", "$TUNNEL_AUTHORIZED_KEYS"} {
		if !strings.Contains(out, flag) {
			t.Errorf("exit --help does not mention %s", flag)
		}
	}
	code, out, _ = runCmd(t, "entry", "--help")
	if code != 0 {
		t.Fatalf("entry --help exit code %d", code)
	}
	for _, flag := range []string{"--listen=ADDR", "--peer=HOST:PORT", "--peer-key", "$TUNNEL_PEER_KEY"} {
		if !strings.Contains(out, flag) {
			t.Errorf("entry --help does not mention %s", flag)
		}
	}
}

// TestUsageErrors checks that bad input exits 2 with one line on stderr naming the problem.
func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	pub := filepath.Join(dir, "k")
	if code, _, errs := runCmd(t, "keygen", "--out", pub, "--bits", "2048"); code != 0 {
		t.Fatalf("keygen: %d %s", code, errs)
	}
	junk := writeFile(t, filepath.Join(dir, "junk"), "not a key\n")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{}, "expected one of"},
		{[]string{"bogus"}, "unexpected argument bogus"},
		{[]string{"--log-level", "loud", "version"}, "--log-level"},
		{[]string{"--log-format", "xml", "version"}, "--log-format"},
		{[]string{"--config", filepath.Join(dir, "none.yaml"), "version"}, "none.yaml"},
		{[]string{"keygen"}, "--out"},
		{[]string{"keygen", "--out", filepath.Join(dir, "x"), "--bits", "1024"}, "--bits 1024"},
		{[]string{"fingerprint"}, "<file>"},
		{[]string{"fingerprint", junk}, "no PEM block"},
		{[]string{"fingerprint", filepath.Join(dir, "none")}, "no such file"},
		{[]string{"exit", "--key", pub + ".key", "--authorized-keys", pub + ".pub"}, "--forward is required"},
		{[]string{"exit", "--forward", "h:1", "--key", pub + ".key", "--authorized-keys", pub + ".pub", "--window", "5"}, "--window 5"},
		{[]string{"exit", "--forward", "h:1", "--key", pub + ".key", "--authorized-keys", pub + ".pub", "--dial-timeout", "5"}, `--dial-timeout: "5": a duration needs a unit: write 5s`},
		{[]string{"exit", "--forward", "h:1", "--key", pub + ".pub", "--authorized-keys", pub + ".pub"},
			"--key " + pub + ".pub: this is a public key; give the private key (.key) made by `tunnel keygen`"},
		{[]string{"exit", "--forward", "h:1", "--key", pub + ".key", "--authorized-keys", pub + ".key"}, "--authorized-keys"},
		{[]string{"exit", "--forward", "h:1", "--key", junk, "--authorized-keys", pub + ".pub"}, "--key " + junk},
		// The bad --status-addr, checked after the services, keeps an exit that
		// would accept allow: [] from starting.
		{[]string{"exit", "--services", "{db: {forward: h:1, allow: []}}", "--key", pub + ".key", "--authorized-keys", pub + ".pub", "--status-addr", "x"},
			"--allow db= (allow: [] or an allow: with no value under the service in the file) names no key"},
		// The library's error, in the terms of the flags.
		{[]string{"exit", "--forward", "db=h:1", "--allow", "db=k,app9", "--key", pub + ".key", "--authorized-keys", pub + ".pub"},
			"--allow db=app9: no such key in --authorized-keys " + pub + ".pub: name a key by its fingerprint"},
		{[]string{"entry", "--peer", "h:1", "--key", pub + ".key"}, "--peer-key is required"},
		// One directory of keys for both sides: any entry could pose as the exit. (The
		// --listen address, which no interface here has, stops with status 1 an entry that
		// would not refuse.)
		{[]string{"entry", "--peer", "h:1", "--key", pub + ".key", "--peer-key", dir, "--listen", "192.0.2.1:1"},
			"--peer-key " + dir + " holds this entry's own public key (SHA256:"},
		{[]string{"entry", "--peer", "h:1=" + pub + ".pub", "--key", pub + ".key", "--listen", "192.0.2.1:1"},
			"--peer h:1=" + pub + ".pub holds this entry's own public key"},
		{[]string{"entry", "--peer", "h:1", "--key", pub + ".key", "--peer-key", pub + ".key"}, "--peer-key " + pub + ".key: key 1: this is a private key"},
		{[]string{"entry", "--peer", "nohost", "--key", pub + ".key", "--peer-key", pub + ".pub"}, "--peer \"nohost\""},
		{[]string{"entry", "--listen", "256.1.1.1:15040", "--peer", "h:1", "--key", pub + ".key", "--peer-key", pub + ".pub"},
			`--listen "256.1.1.1:15040": "256.1.1.1" is neither an IP address nor a name that resolves`},
	}
	for _, tc := range cases {
		// Console logs: errors are plain text (JSON logs are TestFatalErrorJSON's).
		code, out, errs := runCmd(t, append([]string{"--log-format", "console"}, tc.args...)...)
		if code != exitUsage {
			t.Errorf("%q: exit code %d, want %d (stderr %q)", tc.args, code, exitUsage, errs)
		}
		if out != "" {
			t.Errorf("%q: stdout %q, want nothing", tc.args, out)
		}
		if !strings.HasPrefix(errs, "tunnel: ") || strings.Count(errs, "\n") != 1 {
			t.Errorf("%q: stderr %q is not one line starting \"tunnel: \"", tc.args, errs)
		}
		if !strings.Contains(errs, tc.want) {
			t.Errorf("%q: stderr %q does not contain %q", tc.args, errs, tc.want)
		}
	}
}

// TestFatalErrorJSON: when logs are JSON, the error that ends the command is one more JSON log
// line, at level fatal, with the exit code; its text appears once, without a doubled prefix.
func TestFatalErrorJSON(t *testing.T) {
	dir := t.TempDir()
	keyPair(t, dir, "k")
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"exit", "--key", filepath.Join(dir, "k.key"), "--authorized-keys", filepath.Join(dir, "k.pub")},
			exitUsage, "--forward is required"},
		{[]string{"entry", "--listen", "256.1.1.1:15040", "--peer", "h:1", "--key", filepath.Join(dir, "k.key"),
			"--peer-key", filepath.Join(dir, "k.pub")}, exitUsage, `--listen "256.1.1.1:15040"`},
	}
	for _, tc := range cases {
		code, _, errs := runCmd(t, append([]string{"--log-format", "json"}, tc.args...)...)
		var line map[string]any
		if err := json.Unmarshal([]byte(errs), &line); err != nil || strings.Count(errs, "\n") != 1 {
			t.Errorf("%q: stderr %q is not one JSON line", tc.args, errs)
			continue
		}
		msg, _ := line["message"].(string)
		if code != tc.code || line["level"] != "fatal" || line["exit_code"] != float64(tc.code) || !strings.HasPrefix(msg, tc.want) {
			t.Errorf("%q: code %d, line %v; want code %d, level fatal, exit_code, message %q", tc.args, code, line, tc.code, tc.want)
		}
	}
}

// TestErrorLine: an error is printed after the program's name, once.
func TestErrorLine(t *testing.T) {
	for _, tc := range []struct{ err, want string }{
		{"--forward is required", "tunnel: --forward is required"},
		{"tunnel: accept: too many open files", "tunnel: accept: too many open files"},
		{"handshake: bad signature", "tunnel: handshake: bad signature"},
	} {
		if got := errorLine(errors.New(tc.err)); got != tc.want {
			t.Errorf("errorLine(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestPrecedence checks flag > TUNNEL_* env > --config file > default, for flat and per-command
// file keys, durations, integers and global flags.
func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "tunnel.yaml"), `
log-level: debug
listen: 127.0.0.1:1111
peer: flat:1
peer-key: file.pub
window: 524288
dial-timeout: 7s
entry:
  peer: nested:1
exit:
  listen: 127.0.0.1:4444
  max-streams: 9
`)
	peers := writeFile(t, filepath.Join(dir, "peers.yaml"), `
entry:
  peer:
    - exit1.example.net:7000=exit1.pub
    - exit2.example.net:7000
  peer-key: exits.pub
`)
	type want struct {
		logLevel, listen, peer, peerKey string
		window                          uint32
		dial                            time.Duration
	}
	def := want{"info", "127.0.0.1:5000", "", "", 1 << 20, 5 * time.Second}
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want want
	}{
		{"defaults", nil, []string{"entry"}, def},
		{"config", nil, []string{"--config", cfg, "entry"},
			want{"debug", "127.0.0.1:1111", "nested:1", "file.pub", 524288, 7 * time.Second}},
		{"config from env", map[string]string{"TUNNEL_CONFIG": cfg}, []string{"entry"},
			want{"debug", "127.0.0.1:1111", "nested:1", "file.pub", 524288, 7 * time.Second}},
		{"env over config", map[string]string{"TUNNEL_LISTEN": "127.0.0.1:2222", "TUNNEL_WINDOW": "300000",
			"TUNNEL_PEER_KEY": "env.pub", "TUNNEL_LOG_LEVEL": "warn", "TUNNEL_PEER": "env:1"},
			[]string{"--config", cfg, "entry"},
			want{"warn", "127.0.0.1:2222", "env:1", "env.pub", 300000, 7 * time.Second}},
		{"flag over env and config", map[string]string{"TUNNEL_LISTEN": "127.0.0.1:2222", "TUNNEL_WINDOW": "300000",
			"TUNNEL_DIAL_TIMEOUT": "8s"},
			[]string{"--config", cfg, "--log-level", "error", "entry", "--listen", "127.0.0.1:3333", "--dial-timeout", "9s",
				"--peer-key", "flag.pub"},
			want{"error", "127.0.0.1:3333", "nested:1", "flag.pub", 300000, 9 * time.Second}},
		{"env only", map[string]string{"TUNNEL_DIAL_TIMEOUT": "250ms", "TUNNEL_PEER": "env:2"}, []string{"entry"},
			want{"info", "127.0.0.1:5000", "env:2", "", 1 << 20, 250 * time.Millisecond}},
		{"several peers from flags", nil, []string{"entry", "--peer", "a:1", "--peer", "b:2=b.pub"},
			want{"info", "127.0.0.1:5000", "a:1 b:2=b.pub", "", 1 << 20, 5 * time.Second}},
		{"several peers from env", map[string]string{"TUNNEL_PEER": "a:1,b:2=b.pub"}, []string{"entry"},
			want{"info", "127.0.0.1:5000", "a:1 b:2=b.pub", "", 1 << 20, 5 * time.Second}},
		{"several peers from config", nil, []string{"--config", peers, "entry"},
			want{"info", "127.0.0.1:5000", "exit1.example.net:7000=exit1.pub exit2.example.net:7000", "exits.pub", 1 << 20, 5 * time.Second}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, _, err := parse(tc.args, new(bytes.Buffer), new(bytes.Buffer), &configSource{})
			if err != nil {
				t.Fatal(err)
			}
			n, err := c.Entry.settings()
			if err != nil {
				t.Fatal(err)
			}
			got := want{c.LogLevel, n.Listen, strings.Join(n.Peers, " "), n.PeerKey, n.Window, n.DialTimeout}
			if got != tc.want {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}

	// The exit reads its own section; the entry's does not leak into it.
	c, _, err := parse([]string{"--config", cfg, "exit"}, new(bytes.Buffer), new(bytes.Buffer), &configSource{})
	if err != nil {
		t.Fatal(err)
	}
	x, err := c.Exit.settings()
	if err != nil {
		t.Fatal(err)
	}
	if x.Listen != "127.0.0.1:4444" || x.MaxStreams != 9 || x.DialTimeout != 7*time.Second || x.MaxHandshakes != 64 {
		t.Errorf("exit settings from config: %+v", x)
	}
}

func TestBadConfigFile(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, body, want string
		line             int
	}{
		{"not yaml", "listen: [unclosed\n", "not YAML", 1},
		{"bad duration", "# settings\n\ndial-timeout: soon\n", `dial-timeout: "soon" is not a duration`, 3},
		// YAML reads these as numbers, which kong alone takes as nanoseconds.
		{"duration without unit", "dial-timeout: 5\n", "dial-timeout: 5: a duration needs a unit: write 5s", 1},
		{"fraction without unit", "drain-timeout: 1.5\n", "drain-timeout: 1.5: a duration needs a unit: write 1.5s", 1},
		{"duration without unit in section", "entry:\n  keepalive: 15\n", "entry.keepalive: 15: a duration needs a unit: write 15s", 2},
		{"bad number", "window: lots\n", `window: expected a valid 32 bit uint but got "lots"`, 1},
		{"unknown key", "lisen: :1\n", `unknown key "lisen" (did you mean "listen"?)`, 1},
		{"unknown key in section", "entry:\n  forward: a:1\n", `entry: unknown key "forward"`, 2},
		{"section not a map", "entry: 3\n", `entry: must be a map`, 1},
		{"listener field", "entry:\n  services:\n    - listen: 127.0.0.1:1\n      servce: db\n",
			`entry.services[0]: unknown field "servce" (did you mean "service"?)`, 4},
		{"listener mode", "services:\n  - listen: unix:/run/a.sock\n    mode: 660\n", `services[0].mode: mode 660 is not permission bits`, 3},
		{"listener without listen", "services:\n  - service: db\n", `services[0]: no listen:`, 2},
	}
	for _, tc := range cases {
		cfg := writeFile(t, filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".yaml"), tc.body)
		code, _, errs := runCmd(t, "--log-format", "console", "--config", cfg, "entry")
		want := fmt.Sprintf("tunnel: %s:%d: %s", cfg, tc.line, tc.want)
		if code != exitUsage || !strings.HasPrefix(errs, want) || strings.Count(errs, "\n") != 1 {
			t.Errorf("%s: code %d stderr %q, want %d and a line starting %q", tc.name, code, errs, exitUsage, want)
		}
	}
}

// TestConfigFileErrorJSON: with JSON logs (the default on a non-terminal) an error in the
// --config file is one fatal JSON line naming the file and the line in the whole file, the key
// as the file writes it, and no "tunnel: " prefix; under services:, a misspelt field is named
// as the file names it, with a suggestion, not as a Go type.
func TestConfigFileErrorJSON(t *testing.T) {
	dir := t.TempDir()
	keyPair(t, dir, "k")
	body := fmt.Sprintf(`# the exit next to the database
key: %s
authorized-keys: %s

exit:
  listen: 127.0.0.1:0
  dial-timeout: 3s
  services:
    cache:
      forward: 127.0.0.1:6379
    db:
      forwrd: 127.0.0.1:5432
`, filepath.Join(dir, "k.key"), filepath.Join(dir, "k.pub"))
	cfg := writeFile(t, filepath.Join(dir, "exit.yaml"), body)
	for _, args := range [][]string{{"--config", cfg, "exit"}, {"exit", "--config", cfg, "--log-format", "json"}} {
		code, _, errs := runCmd(t, args...)
		var line map[string]any
		if err := json.Unmarshal([]byte(errs), &line); err != nil || strings.Count(errs, "\n") != 1 {
			t.Fatalf("%q: stderr %q is not one JSON line", args, errs)
		}
		want := cfg + `:12: exit.services.db: unknown field "forwrd" (did you mean "forward"?)`
		msg, _ := line["message"].(string)
		if code != exitUsage || line["level"] != "fatal" || !strings.HasPrefix(msg, want) || line["line"] != float64(12) ||
			line["config_file"] != cfg || strings.Contains(errs, "tunnel: ") || strings.Contains(errs, "exitServiceSpec") {
			t.Errorf("%q: code %d, line %v; want code %d and a fatal line with message %q", args, code, line, exitUsage, want)
		}
	}
}

// TestLogFormat checks that logs on a non-terminal are JSON lines by default, console on request,
// and that --log-level filters.
func TestLogFormat(t *testing.T) {
	dir := t.TempDir()
	code, _, errs := runCmd(t, "keygen", "--bits", "2048", "--out", filepath.Join(dir, "a"))
	if code != 0 {
		t.Fatalf("keygen: %d %s", code, errs)
	}
	var line map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(errs)), &line); err != nil {
		t.Fatalf("default log on a buffer is not one JSON line: %q: %v", errs, err)
	}
	if line["level"] != "info" || line["message"] == nil || line["time"] == nil {
		t.Errorf("log line lacks zerolog's default fields: %v", line)
	}
	code, _, errs = runCmd(t, "--log-format", "console", "keygen", "--bits", "2048", "--out", filepath.Join(dir, "b"))
	if code != 0 || !strings.Contains(errs, "INF") || strings.HasPrefix(errs, "{") {
		t.Errorf("console log: code %d %q", code, errs)
	}
	code, _, errs = runCmd(t, "--log-level", "warn", "keygen", "--bits", "2048", "--out", filepath.Join(dir, "c"))
	if code != 0 || errs != "" {
		t.Errorf("--log-level warn still logged info: code %d %q", code, errs)
	}
}

// TestDemoCommand runs `tunnel demo` (the demo itself is tested in package demo) and checks the
// wiring: exit code, output on stdout, agents' info logs hidden without --verbose.
func TestDemoCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo pushes 256 MiB")
	}
	code, out, errs := runCmd(t, "demo")
	if code != 0 {
		t.Fatalf("demo: code %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	if !strings.Contains(out, "Checked: the backend received exactly") || !strings.Contains(out, "MB/s") {
		t.Errorf("demo output:\n%s", out)
	}
	if strings.Contains(errs, `"level":"info"`) {
		t.Errorf("demo logged info lines without --verbose:\n%s", errs)
	}
}

// TestInsecureKeyPerms: an agent refuses a private key file that group or others may read, with
// the chmod that fixes it and exit status 2; the flag, its variable or the config file lets it
// through where a mounted Secret decides the mode.
func TestInsecureKeyPerms(t *testing.T) {
	dir := t.TempDir()
	keyPair(t, dir, "k")
	key, pub := filepath.Join(dir, "k.key"), filepath.Join(dir, "k.pub")
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	exit := []string{"exit", "--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9", "--key", key, "--authorized-keys", pub}
	entry := []string{"entry", "--listen", "127.0.0.1:0", "--peer", "127.0.0.1:9", "--key", key, "--peer-key", pub}
	for _, args := range [][]string{exit, entry} {
		code, _, errs := runCmd(t, append([]string{"--log-format", "console"}, args...)...)
		if want := "tunnel: --key " + key + ": mode 0644 lets group or others access this private key: run chmod 600 " + key; code != exitUsage || !strings.HasPrefix(errs, want) {
			t.Errorf("%s: code %d, stderr %q; want %d and %q", args[0], code, errs, exitUsage, want)
		}
	}

	cfg := writeFile(t, filepath.Join(dir, "tunnel.yaml"), "allow-insecure-key-perms: true\n")
	for _, tc := range []struct {
		name string
		env  map[string]string
		pre  []string
		post []string
	}{
		{"flag", nil, nil, []string{"--allow-insecure-key-perms"}},
		{"environment", map[string]string{"TUNNEL_ALLOW_INSECURE_KEY_PERMS": "true"}, nil, nil},
		{"config file", nil, []string{"--config", cfg}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			for _, args := range [][]string{exit, entry} {
				c, _, err := parse(append(append(tc.pre, args...), tc.post...), new(bytes.Buffer), new(bytes.Buffer), &configSource{})
				if err != nil {
					t.Fatal(err)
				}
				if args[0] == "exit" {
					x, serr := c.Exit.settings()
					err = errors.Join(serr, x.Validate())
				} else {
					n, serr := c.Entry.settings()
					err = errors.Join(serr, n.Validate())
				}
				if err != nil {
					t.Errorf("%s: %v", args[0], err)
				}
			}
		})
	}
}
