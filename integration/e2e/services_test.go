package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// startAgent runs the binary with args and returns it with the address of
// each of its listeners by service (the exit's under "") and its status
// endpoint's address.
func startAgent(t *testing.T, bin string, listeners int, args ...string) (*harness.Proc, map[string]string, string) {
	t.Helper()
	p := harness.Start(t, bin, args...)
	addrs := map[string]string{}
	for i := 1; i <= listeners; i++ {
		l := p.WaitMessage(t, i, 30*time.Second, "listening")
		addrs[l.String("service")] = l.String("addr")
	}
	status := p.WaitMessage(t, 1, 30*time.Second, "status endpoint listening").String("addr")
	return p, addrs, status
}

// get fetches path from the status endpoint at addr.
func get(t *testing.T, addr, path string) []byte {
	t.Helper()
	c := http.Client{Timeout: 30 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s%s: %s, %v: %s", addr, path, resp.Status, err, b)
	}
	return b
}

// statusOf fetches /status from addr.
func statusOf(t *testing.T, addr string) map[string]any {
	t.Helper()
	var m map[string]any
	if b := get(t, addr, "/status"); json.Unmarshal(b, &m) != nil {
		t.Fatalf("/status is not JSON: %s", b)
	}
	return m
}

// redisSetGet sets key to "value" in the Redis at addr, reads it back and
// checks both answers.
func redisSetGet(t *testing.T, addr, key string) {
	t.Helper()
	c := harness.Dial(t, addr, 30*time.Second)
	defer c.Close()
	fmt.Fprintf(c, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", len(key), key, len(key), key)
	rd := bufio.NewReader(c)
	for _, want := range []string{"+OK\r\n", "$5\r\n", "value\r\n"} {
		if line, err := rd.ReadString('\n'); err != nil || line != want {
			t.Fatalf("redis through %s: %q, %v; want %q", addr, line, err, want)
		}
	}
}

// TestTwoServices: one exit forwards PostgreSQL as service db and Redis as
// service cache; db is open to one entry key only. The first entry reaches
// both through one session; the second reaches cache, is refused db with
// status 3 (logged on both sides with key and service) and is told of cache
// alone when it names a service the exit does not have.
func TestTwoServices(t *testing.T) {
	t.Parallel()
	psql, err := exec.LookPath("psql")
	harness.RequireOrSkip(t, "psql (Debian package postgresql-client)", err == nil)
	r := harness.NewRig(t)
	app2 := harness.NewIdentity(t, r.Bin, "app2")
	pg, redis := harness.StartPostgres(t), harness.StartRedis(t)

	// The exit authorizes a directory: app1.pub (the rig's entry key) and app2.pub.
	keys := t.TempDir()
	for name, src := range map[string]string{"app1.pub": r.Entry.Pub, "app2.pub": app2.Pub} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(keys, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	exit, xaddrs, xstatus := startAgent(t, r.Bin, 1, "exit", "--listen", "127.0.0.1:0",
		"--forward", "db="+pg, "--forward", "cache="+redis, "--allow", "db=app1",
		"--key", r.Exit.Key, "--authorized-keys", keys, "--status-addr", "127.0.0.1:0")
	entryArgs := func(key string, services ...string) []string {
		args := []string{"entry", "--peer", xaddrs[""], "--key", key, "--peer-key", r.Exit.Pub, "--status-addr", "127.0.0.1:0"}
		for _, s := range services {
			args = append(args, "--listen", "127.0.0.1:0="+s)
		}
		return args
	}
	entry1, addrs1, status1 := startAgent(t, r.Bin, 2, entryArgs(r.Entry.Key, "db", "cache")...)
	entry2, addrs2, _ := startAgent(t, r.Bin, 3, entryArgs(app2.Key, "db", "cache", "nope")...)

	query := func(addr string) (string, error) {
		host, port, _ := net.SplitHostPort(addr)
		cmd := exec.Command(psql, "-XAtc", "select 6*7")
		cmd.Env = append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=postgres",
			"PGDATABASE=postgres", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}

	// The first entry: both services, one session.
	if out, err := query(addrs1["db"]); err != nil || out != "42" {
		t.Fatalf("psql through the entry's db listener: %v: %s", err, out)
	}
	redisSetGet(t, addrs1["cache"], "k1")
	entry1.WaitMessage(t, 1, 30*time.Second, "session established")
	entry2.WaitMessage(t, 1, 30*time.Second, "session established")
	if n := exit.Count(harness.MessageIs("session established")); n != 2 {
		t.Errorf("exit logged %d sessions, want one per entry", n)
	}

	// The second entry: cache yes, db refused by policy, nope unknown.
	redisSetGet(t, addrs2["cache"], "k2")
	if out, err := query(addrs2["db"]); err == nil {
		t.Fatalf("psql through the second entry's db listener succeeded (%s); the exit should refuse its key", out)
	}
	exit.WaitLine(t, 1, 30*time.Second, "a refusal naming app2's key and service db", func(l harness.Line) bool {
		return l.String("service") == "db" && l.String("peer_fingerprint") == app2.Fingerprint &&
			strings.Contains(l.Message(), "may not reach service")
	})
	entry2.WaitLine(t, 1, 30*time.Second, "a refused connection naming the key and service db", func(l harness.Line) bool {
		return l.Message() == "connection closed" && l.String("service") == "db" &&
			l.String("fingerprint") == app2.Fingerprint && strings.Contains(l.String("reason"), "refused by policy")
	})
	// The entry resets the connection once the exit refuses its stream,
	// which may be before the dial returns.
	if c, err := net.DialTimeout("tcp", addrs2["nope"], 30*time.Second); err == nil {
		c.Write([]byte("hello"))
		c.Close()
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatal(err)
	}
	l := entry2.WaitLine(t, 1, 30*time.Second, "the unknown service's refusal", func(l harness.Line) bool {
		return l.Message() == "connection closed" && l.String("service") == "nope"
	})
	if reason := l.String("reason"); !strings.Contains(reason, "unknown service") || !strings.Contains(reason, "cache") || strings.Contains(reason, "db") {
		t.Errorf("unknown service: reason %q, want one listing cache and not db", reason)
	}

	// Per service on both sides.
	services := func(m map[string]any) map[string]any {
		s, _ := m["services"].(map[string]any)
		return s
	}
	count := func(m map[string]any, service, field string) float64 {
		s, _ := services(m)[service].(map[string]any)
		v, _ := s[field].(float64)
		return v
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		xs, ns := statusOf(t, xstatus), statusOf(t, status1)
		if count(xs, "db", "streams_total") >= 1 && count(xs, "db", "streams_refused") >= 1 &&
			count(xs, "cache", "streams_total") == 2 && count(ns, "db", "streams_total") >= 1 &&
			count(ns, "cache", "bytes_to_app") > 0 && count(xs, "db", "streams") == 0 {
			if _, ok := services(xs)["nope"]; ok {
				t.Errorf("exit /status lists a service an entry named: %v", services(xs))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("per-service status not as expected:\nexit  %v\nentry %v", services(xs), services(ns))
		}
		time.Sleep(100 * time.Millisecond)
	}
	metrics := string(get(t, xstatus, "/metrics"))
	for _, want := range []string{`tunnel_streams_total{service="db",status="refused"}`, `tunnel_bytes_total{direction="to_app",service="cache"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("exit metrics lack %s", want)
		}
	}
	entry1.CheckNoErrors(t)
	exit.CheckNoErrors(t)
}

// TestServicesFromFiles: an exit and an entry that take their services from
// services: in their --config files, as README writes them, carry both over
// one session: Redis as service cache, and a hash echo as service echo, which
// an allow: rule opens to the entry's key.
func TestServicesFromFiles(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	redis, echo := harness.StartRedis(t), harness.StartHashEcho(t)
	dir := t.TempDir()
	write := func(name, yaml string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	exitFile := write("exit.yaml", fmt.Sprintf(`exit:
  listen: 127.0.0.1:0
  status-addr: 127.0.0.1:0
  key: %q
  authorized-keys: %q
  services:
    cache:
      forward: %q
    echo:
      forward: %q
      allow: [%q]
`, r.Exit.Key, r.Entry.Pub, redis, echo.Addr(), r.Entry.Fingerprint))
	exit, xaddrs, _ := startAgent(t, r.Bin, 1, "exit", "--config", exitFile)
	entryFile := write("entry.yaml", fmt.Sprintf(`entry:
  peer: %q
  status-addr: 127.0.0.1:0
  key: %q
  peer-key: %q
  services:
    - listen: 127.0.0.1:0
      service: cache
    - listen: 127.0.0.1:0
      service: echo
`, xaddrs[""], r.Entry.Key, r.Exit.Pub))
	entry, addrs, _ := startAgent(t, r.Bin, 2, "entry", "--config", entryFile)
	if len(addrs) != 2 || addrs["cache"] == "" || addrs["echo"] == "" {
		t.Fatalf("entry listeners by service: %v, want cache and echo", addrs)
	}

	redisSetGet(t, addrs["cache"], "from-file")
	if err := harness.Exchange(addrs["echo"], 1<<20, 7, 30*time.Second); err != nil {
		t.Fatalf("hash echo through the entry's echo listener: %v", err)
	}
	if echo.Accepted() != 1 {
		t.Errorf("the echo backend accepted %d connections, want the one of service echo", echo.Accepted())
	}
	entry.WaitMessage(t, 1, 30*time.Second, "session established")
	if n := exit.Count(harness.MessageIs("session established")); n != 1 {
		t.Errorf("exit logged %d sessions, want both services over one", n)
	}
	entry.CheckNoErrors(t)
	exit.CheckNoErrors(t)
}
