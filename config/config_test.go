package config

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// keyFiles makes a readable key file, a public key file and a directory of keys in a temp dir.
func keyFiles(t *testing.T) (key, pub, dir string) {
	t.Helper()
	d := t.TempDir()
	key = filepath.Join(d, "a.key")
	pub = filepath.Join(d, "a.pub")
	dir = filepath.Join(d, "authorized")
	for _, p := range []string{key, pub} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return key, pub, dir
}

func TestDefaults(t *testing.T) {
	x := DefaultExit()
	want := Exit{Listen: ":7000", DialTimeout: 5 * time.Second, HandshakeTimeout: 10 * time.Second,
		MaxHandshakes: 64, MaxStreams: 4096, KeepAlive: 15 * time.Second, Window: 1 << 20,
		DrainTimeout: 30 * time.Second, HandshakeRate: 10, ResumeWindow: time.Minute}
	if !reflect.DeepEqual(x, want) {
		t.Errorf("DefaultExit() = %+v, want %+v", x, want)
	}
	n := DefaultEntry()
	wantN := Entry{Listen: "127.0.0.1:5000", DialTimeout: 5 * time.Second, HandshakeTimeout: 10 * time.Second,
		KeepAlive: 15 * time.Second, Window: 1 << 20, DrainTimeout: 30 * time.Second, ResumeWindow: time.Minute}
	if !reflect.DeepEqual(n, wantN) {
		t.Errorf("DefaultEntry() = %+v, want %+v", n, wantN)
	}
	// The defaults alone lack the required fields.
	if x.Validate() == nil || n.Validate() == nil {
		t.Error("defaults without required fields validated")
	}
}

func TestExitValidate(t *testing.T) {
	key, pub, dir := keyFiles(t)
	missing := filepath.Join(t.TempDir(), "nope.key")
	good := func() Exit {
		c := DefaultExit()
		c.Forward = "127.0.0.1:8080"
		c.Key = key
		c.AuthorizedKeys = pub
		return c
	}
	if err := good().Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	okCases := []struct {
		name string
		mod  func(*Exit)
	}{
		{"authorized dir", func(c *Exit) { c.AuthorizedKeys = dir }},
		{"listen any port", func(c *Exit) { c.Listen = "127.0.0.1:0" }},
		{"listen ipv6", func(c *Exit) { c.Listen = "[::1]:7000" }},
		{"listen name", func(c *Exit) { c.Listen = "localhost:7000" }},
		{"forward name", func(c *Exit) { c.Forward = "db.internal:5432" }},
		{"window min", func(c *Exit) { c.Window = MinWindow }},
		{"window max", func(c *Exit) { c.Window = MaxWindow }},
	}
	for _, tc := range okCases {
		c := good()
		tc.mod(&c)
		if err := c.Validate(); err != nil {
			t.Errorf("%s: unexpected error %v", tc.name, err)
		}
	}
	cases := []struct {
		name string
		mod  func(*Exit)
		want []string // substrings of the error
	}{
		{"no listen", func(c *Exit) { c.Listen = "" }, []string{"--listen", "required"}},
		{"listen no port", func(c *Exit) { c.Listen = "7000" }, []string{"--listen", "host:port"}},
		{"listen bad port", func(c *Exit) { c.Listen = ":http" }, []string{"--listen", "0..65535"}},
		{"listen port too big", func(c *Exit) { c.Listen = ":70000" }, []string{"--listen", "0..65535"}},
		{"listen not an address", func(c *Exit) { c.Listen = "256.1.1.1:15040" }, []string{"--listen", `"256.1.1.1" is neither an IP address nor a name that resolves`}},
		{"status not an address", func(c *Exit) { c.StatusAddr = "no-such-host.invalid:9070" }, []string{"--status-addr", "no-such-host.invalid"}},
		{"no forward", func(c *Exit) { c.Forward = "" }, []string{"--forward", "required", "host:port"}},
		{"forward no host", func(c *Exit) { c.Forward = ":8080" }, []string{"--forward", "no host"}},
		{"forward no port", func(c *Exit) { c.Forward = "backend" }, []string{"--forward", "host:port"}},
		{"forward port 0", func(c *Exit) { c.Forward = "backend:0" }, []string{"--forward", "1..65535"}},
		{"no key", func(c *Exit) { c.Key = "" }, []string{"--key", "required", "tunnel keygen"}},
		{"key missing", func(c *Exit) { c.Key = missing }, []string{"--key", missing, "no such file"}},
		{"key is dir", func(c *Exit) { c.Key = dir }, []string{"--key", "directory"}},
		{"no authorized", func(c *Exit) { c.AuthorizedKeys = "" }, []string{"--authorized-keys", "required"}},
		{"authorized missing", func(c *Exit) { c.AuthorizedKeys = missing }, []string{"--authorized-keys", "no such file"}},
		{"dial timeout", func(c *Exit) { c.DialTimeout = 0 }, []string{"--dial-timeout", "greater than zero"}},
		{"handshake timeout", func(c *Exit) { c.HandshakeTimeout = -time.Second }, []string{"--handshake-timeout", "greater than zero"}},
		{"max handshakes", func(c *Exit) { c.MaxHandshakes = 0 }, []string{"--max-handshakes", "greater than zero"}},
		{"max streams", func(c *Exit) { c.MaxStreams = -1 }, []string{"--max-streams", "greater than zero"}},
		{"handshake rate", func(c *Exit) { c.HandshakeRate = 0 }, []string{"--handshake-rate", "greater than zero"}},
		{"status addr", func(c *Exit) { c.StatusAddr = "nope" }, []string{"--status-addr", "not host:port"}},
		{"keepalive", func(c *Exit) { c.KeepAlive = 0 }, []string{"--keepalive", "greater than zero"}},
		{"window small", func(c *Exit) { c.Window = MinWindow - 1 }, []string{"--window", "out of range"}},
		{"window big", func(c *Exit) { c.Window = MaxWindow + 1 }, []string{"--window", "out of range"}},
		{"drain timeout", func(c *Exit) { c.DrainTimeout = 0 }, []string{"--drain-timeout", "greater than zero"}},
	}
	for _, tc := range cases {
		c := good()
		tc.mod(&c)
		checkErr(t, tc.name, c.Validate(), tc.want)
	}
}

func TestEntryValidate(t *testing.T) {
	key, pub, dir := keyFiles(t)
	missing := filepath.Join(t.TempDir(), "nope.pub")
	good := func() Entry {
		c := DefaultEntry()
		c.Peers = []string{"exit.example.com:7000"}
		c.Key = key
		c.PeerKey = pub
		return c
	}
	if err := good().Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	cases := []struct {
		name string
		mod  func(*Entry)
		want []string
	}{
		{"no listen", func(c *Entry) { c.Listen = "" }, []string{"--listen", "required"}},
		{"listen garbage", func(c *Entry) { c.Listen = "a:b:c" }, []string{"--listen", "host:port"}},
		{"listen not an address", func(c *Entry) { c.Listen = "256.1.1.1:15040" }, []string{"--listen", "256.1.1.1", ":15040 for all"}},
		{"no peer", func(c *Entry) { c.Peers = nil }, []string{"--peer", "required"}},
		{"peer no host", func(c *Entry) { c.Peers = []string{":7000"} }, []string{"--peer", "no host"}},
		{"peer no port", func(c *Entry) { c.Peers = []string{"exit"} }, []string{"--peer", "host:port"}},
		{"peer bad port", func(c *Entry) { c.Peers = []string{"exit:99999"} }, []string{"--peer", "1..65535"}},
		{"second peer bad", func(c *Entry) { c.Peers = append(c.Peers, "exit2") }, []string{"--peer", `"exit2"`, "host:port"}},
		{"peer twice", func(c *Entry) { c.Peers = append(c.Peers, c.Peers[0]) }, []string{"--peer exit.example.com:7000", "twice"}},
		{"peer empty key", func(c *Entry) { c.Peers = []string{"exit:7000="} }, []string{"--peer", "no key file"}},
		{"peer key missing", func(c *Entry) { c.Peers = []string{"exit:7000=" + missing} }, []string{"--peer exit:7000=", "no such file"}},
		{"peer without keys", func(c *Entry) { c.PeerKey, c.Peers = "", []string{"a:1=" + pub, "b:1"} }, []string{"--peer-key is required", "b:1=exit.pub"}},
		{"no key", func(c *Entry) { c.Key = "" }, []string{"--key", "required"}},
		{"key missing", func(c *Entry) { c.Key = missing }, []string{"--key", "no such file"}},
		{"no peer key", func(c *Entry) { c.PeerKey = "" }, []string{"--peer-key", "required"}},
		{"peer key missing", func(c *Entry) { c.PeerKey = missing }, []string{"--peer-key", "no such file"}},
		{"dial timeout", func(c *Entry) { c.DialTimeout = 0 }, []string{"--dial-timeout"}},
		{"handshake timeout", func(c *Entry) { c.HandshakeTimeout = 0 }, []string{"--handshake-timeout"}},
		{"keepalive", func(c *Entry) { c.KeepAlive = -1 }, []string{"--keepalive"}},
		{"window", func(c *Entry) { c.Window = 1024 }, []string{"--window", "out of range"}},
		{"drain timeout", func(c *Entry) { c.DrainTimeout = 0 }, []string{"--drain-timeout"}},
	}
	for _, tc := range cases {
		c := good()
		tc.mod(&c)
		checkErr(t, tc.name, c.Validate(), tc.want)
	}
	// Every exit with its own keys needs no --peer-key.
	c0 := good()
	c0.PeerKey, c0.Peers = "", []string{"a:1=" + pub, "b:1=" + dir}
	if err := c0.Validate(); err != nil {
		t.Errorf("every peer with its own keys: %v", err)
	}
	// A directory of the exit's keys (several during a rotation) is valid.
	c := good()
	c.PeerKey = dir
	if err := c.Validate(); err != nil {
		t.Errorf("--peer-key as a directory: %v", err)
	}
}

func TestUnreadableKey(t *testing.T) {
	if os.Geteuid() == 0 {
		asNobody(t, "TestUnreadableKey") // root reads files regardless of mode
		return
	}
	key, pub, _ := keyFiles(t)
	if err := os.Chmod(key, 0); err != nil {
		t.Fatal(err)
	}
	c := DefaultEntry()
	c.Peers, c.Key, c.PeerKey = []string{"h:1"}, key, pub
	checkErr(t, "unreadable", c.Validate(), []string{"--key", "permission denied"})
}

// asNobody runs the test named name again in a copy of this test binary as
// the user nobody (runuser, from util-linux), and fails t if it fails.
func asNobody(t *testing.T, name string) {
	t.Helper()
	runuser, err := exec.LookPath("runuser")
	if err != nil {
		t.Fatalf("running as root: %s needs runuser (util-linux) to run as nobody: %v", name, err)
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "asnobody") // t.TempDir's parent is not open to nobody
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "config.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(runuser, "-u", "nobody", "--", bin, "-test.run=^"+name+"$", "-test.count=1", "-test.v")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "TMPDIR=/tmp")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+name) {
		t.Fatalf("%s as nobody: %v\n%s", name, err, out)
	}
}

func checkErr(t *testing.T, name string, err error, want []string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want one containing %q", name, want)
		return
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q does not contain %q", name, err, w)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("%s: error %q spans lines", name, err)
	}
}
