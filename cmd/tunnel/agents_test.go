package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/handshake"
)

// TestMain lets a test run this binary as the real command, so that signals and exit codes
// can be checked in a child process. Agents that run inside the test process run without
// their sandbox (TUNNEL_SANDBOX=false), which would restrict the whole process, every later
// test included; integration/e2e's TestSandbox runs it in the real binary.
func TestMain(m *testing.M) {
	if os.Getenv("TUNNEL_TEST_AS_MAIN") == "1" {
		main()
		return
	}
	os.Setenv("TUNNEL_SANDBOX", "false")
	os.Exit(m.Run())
}

// logWatch collects what a command writes to stderr and lets a test wait for a line.
// Safe for concurrent use.
type logWatch struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *logWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *logWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitJSON waits for a JSON log line whose message is msg and returns it decoded.
func (w *logWatch) waitJSON(t *testing.T, msg string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(w.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["message"] == msg {
				return m
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no log line %q within 15s; log:\n%s", msg, w.String())
	return nil
}

// keyPair writes name.key and name.pub (2048 bits, for speed) in dir and returns the
// fingerprint.
func keyPair(t *testing.T, dir, name string) string {
	t.Helper()
	k, err := handshake.GenerateKey(2048)
	if err != nil {
		t.Fatal(err)
	}
	priv, _ := handshake.MarshalPrivateKeyPEM(k)
	pub, _ := handshake.MarshalPublicKeyPEM(&k.PublicKey)
	if err := os.WriteFile(filepath.Join(dir, name+".key"), priv, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".pub"), pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return handshake.Fingerprint(&k.PublicKey)
}

// backend accepts on loopback; each connection echoes, or with hold just reads and stays open.
// It reports every connection it accepts on conns.
func backend(t *testing.T, hold bool) (addr string, conns chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns = make(chan net.Conn, 16)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			select {
			case conns <- c:
			default:
			}
			if !hold {
				wg.Add(1)
				go func() { defer wg.Done(); io.Copy(c, c); c.Close() }()
			}
		}
	}()
	return ln.Addr().String(), conns
}

// TestExitEntry runs both agents in-process through run(), with settings from flags, the
// environment and a config file, passes data through them, and stops them by cancelling the
// context, which must give exit code 0.
func TestExitEntry(t *testing.T) {
	dir := t.TempDir()
	exitFP := keyPair(t, dir, "exit")
	keyPair(t, dir, "entry")
	back, _ := backend(t, false)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	codes := make(chan string, 2)
	start := func(name string, stderr *logWatch, args ...string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var stdout bytes.Buffer
			code := run(ctx, args, &stdout, stderr, nil)
			codes <- fmt.Sprintf("%s=%d", name, code)
		}()
	}

	var exitLog, entryLog logWatch
	start("exit", &exitLog, "--log-format", "json", "exit", "--listen", "127.0.0.1:0", "--forward", back,
		"--key", filepath.Join(dir, "exit.key"), "--authorized-keys", dir, "--drain-timeout", "5s")
	l := exitLog.waitJSON(t, "listening")
	if l["role"] != "exit" {
		t.Errorf("exit's listening line: %v", l)
	}
	exitAddr := l["addr"].(string)

	// The entry takes its peer from the environment and its keys from a config file.
	cfg := writeFile(t, filepath.Join(dir, "entry.yaml"), fmt.Sprintf("entry:\n  key: %s\n  peer-key: %s\n  peer: 127.0.0.1:1\n",
		filepath.Join(dir, "entry.key"), filepath.Join(dir, "exit.pub")))
	t.Setenv("TUNNEL_PEER", exitAddr)
	start("entry", &entryLog, "--log-format", "json", "--config", cfg, "entry", "--listen", "127.0.0.1:0")
	l = entryLog.waitJSON(t, "listening")
	if l["role"] != "entry" {
		t.Errorf("entry's listening line: %v", l)
	}
	entryAddr := l["addr"].(string)
	est := entryLog.waitJSON(t, "session established")
	if est["peer_fingerprint"] != exitFP {
		t.Errorf("session established with %v, want %s", est["peer_fingerprint"], exitFP)
	}

	c, err := net.Dial("tcp", entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("through the tunnel and back")
	c.Write(msg)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the tunnel: %q, %v", got, err)
	}
	c.Close()

	cancel()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("agents did not stop within 15s of the context's end")
	}
	close(codes)
	for code := range codes {
		if !strings.HasSuffix(code, "=0") {
			t.Errorf("exit code %s, want 0\nexit log:\n%s\nentry log:\n%s", code, exitLog.String(), entryLog.String())
		}
	}
}

// TestListenInUse: with the agent's port or the status port taken, the command fails before it
// claims to be listening or ready, and says which flag's address it could not bind.
func TestListenInUse(t *testing.T) {
	dir := t.TempDir()
	keyPair(t, dir, "k")
	keyPair(t, dir, "x") // the exit's, for the entry to pin: never its own
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	busy := taken.Addr().String()
	exit := []string{"exit", "--forward", "127.0.0.1:9", "--key", filepath.Join(dir, "k.key"), "--authorized-keys", filepath.Join(dir, "k.pub")}
	entry := []string{"entry", "--peer", "127.0.0.1:9", "--key", filepath.Join(dir, "k.key"), "--peer-key", filepath.Join(dir, "x.pub")}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append(exit, "--listen", busy), "--listen " + busy + ": listen tcp " + busy},
		{append(entry, "--listen", busy), "--listen " + busy + ": listen tcp " + busy},
		{append(exit, "--listen", "127.0.0.1:0", "--status-addr", busy), "--status-addr " + busy + ": listen tcp " + busy},
		{append(entry, "--listen", "127.0.0.1:0", "--status-addr", busy), "--status-addr " + busy + ": listen tcp " + busy},
	} {
		code, _, errs := runCmd(t, append([]string{"--log-format", "json"}, tc.args...)...)
		if code != exitRuntime || strings.Count(errs, "\n") != 1 || !strings.Contains(errs, `"level":"fatal"`) ||
			!strings.Contains(errs, tc.want) || strings.Contains(errs, "tunnel: tunnel:") {
			t.Errorf("%q: code %d, stderr %q; want %d and one fatal line with %q", tc.args[0], code, errs, exitRuntime, tc.want)
		}
		code, _, errs = runCmd(t, append([]string{"--log-format", "console"}, tc.args...)...)
		if code != exitRuntime || !strings.HasPrefix(errs, "tunnel: "+tc.want) || strings.Count(errs, "\n") != 1 {
			t.Errorf("%q: console: code %d, stderr %q; want only the line \"tunnel: %s...\"", tc.args[0], code, errs, tc.want)
		}
	}
}

// TestStartupOrder: "ready" comes after every listener is bound and has said so.
func TestStartupOrder(t *testing.T) {
	dir := t.TempDir()
	keyPair(t, dir, "k")
	keyPair(t, dir, "x") // the exit's, for the entry to pin: never its own
	for _, args := range [][]string{
		{"exit", "--forward", "127.0.0.1:9", "--key", filepath.Join(dir, "k.key"), "--authorized-keys", filepath.Join(dir, "k.pub")},
		{"entry", "--peer", "127.0.0.1:9", "--key", filepath.Join(dir, "k.key"), "--peer-key", filepath.Join(dir, "x.pub")},
	} {
		var log logWatch
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int, 1)
		go func() {
			done <- run(ctx, append([]string{"--log-format", "json", args[0], "--listen", "127.0.0.1:0",
				"--status-addr", "127.0.0.1:0"}, args[1:]...), io.Discard, &log, nil)
		}()
		ready := log.waitJSON(t, args[0]+" ready")
		// The status endpoint serves the agent's metrics, with this build's version.
		status := log.waitJSON(t, "status endpoint listening")["addr"].(string)
		buildInfo := fmt.Sprintf("tunnel_build_info{role=%q,version=%q} 1\n", args[0], thisBuild().Version)
		if resp, err := http.Get("http://" + status + "/metrics"); err != nil {
			t.Errorf("%s: GET /metrics: %v", args[0], err)
		} else {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(body), buildInfo) {
				t.Errorf("%s: /metrics lacks %q:\n%s", args[0], buildInfo, body)
			}
		}
		cancel()
		if code := <-done; code != exitOK {
			t.Errorf("%s: exit code %d; log:\n%s", args[0], code, log.String())
		}
		if ready["fingerprint"] == nil || ready["role"] != args[0] {
			t.Errorf("%s: ready line %v lacks role or fingerprint", args[0], ready)
		}
		var msgs []string
		for i, line := range strings.Split(strings.TrimSpace(log.String()), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil {
				msgs = append(msgs, fmt.Sprint(m["message"]))
			}
			if v := thisBuild().Version; i == 0 && m["version"] != v {
				t.Errorf("%s: first log line %s lacks \"version\":%q", args[0], line, v)
			}
		}
		want := []string{"listening", "status endpoint listening", args[0] + " ready"}
		if len(msgs) < 3 || !slices.Equal(msgs[:3], want) {
			t.Errorf("%s: log lines %q, want them to start %q", args[0], msgs, want)
		}
	}
}

// child is the command running in a child process, its stderr collected.
type child struct {
	cmd  *exec.Cmd
	log  logWatch
	done chan struct{}
	err  error
}

func startChild(t *testing.T, args ...string) *child {
	t.Helper()
	return startChildWith(t, nil, args...)
}

// startChildWith is startChild with prep, when not nil, to change the command before it starts.
func startChildWith(t *testing.T, prep func(*exec.Cmd), args ...string) *child {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: exec.Command(self, args...), done: make(chan struct{})}
	c.cmd.Env = append(os.Environ(), "TUNNEL_TEST_AS_MAIN=1")
	if prep != nil {
		prep(c.cmd)
	}
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			c.log.Write(append(sc.Bytes(), '\n'))
		}
		c.err = c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		<-c.done
	})
	return c
}

// exitCode waits up to d for the child to end and returns its exit code.
func (c *child) exitCode(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-c.done:
		return c.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		t.Fatalf("%v still running after %v; log:\n%s", c.cmd.Args[1:], d, c.log.String())
		return -1
	}
}

// TestSignals runs the real command in child processes: with a stream open, the first SIGINT
// makes the entry drain (it keeps running), a second one makes it exit at once with 130; an
// exit with no open stream stops on SIGTERM with 0.
func TestSignals(t *testing.T) {
	dir := t.TempDir()
	keyPair(t, dir, "exit")
	keyPair(t, dir, "entry")
	back, conns := backend(t, true)

	x := startChild(t, "--log-format", "json", "exit", "--listen", "127.0.0.1:0", "--forward", back,
		"--key", filepath.Join(dir, "exit.key"), "--authorized-keys", filepath.Join(dir, "entry.pub"))
	exitAddr := x.log.waitJSON(t, "listening")["addr"].(string)
	n := startChild(t, "--log-format", "json", "entry", "--listen", "127.0.0.1:0", "--peer", exitAddr,
		"--key", filepath.Join(dir, "entry.key"), "--peer-key", filepath.Join(dir, "exit.pub"), "--drain-timeout", "60s")
	entryAddr := n.log.waitJSON(t, "listening")["addr"].(string)

	app, err := net.Dial("tcp", entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	app.Write([]byte("ping"))
	select {
	case <-conns: // the stream reached the backend, which holds it open
	case <-time.After(15 * time.Second):
		t.Fatalf("no backend connection; entry log:\n%s", n.log.String())
	}

	n.cmd.Process.Signal(syscall.SIGINT)
	n.log.waitJSON(t, "stop requested (a second SIGINT/SIGTERM exits at once, without draining)")
	// A SIGHUP during the drain is not a second stop signal.
	n.cmd.Process.Signal(syscall.SIGHUP)
	n.log.waitJSON(t, "keys reloaded")
	select {
	case <-n.done:
		t.Fatalf("entry exited on the first signal with a stream open; log:\n%s", n.log.String())
	case <-time.After(300 * time.Millisecond):
	}
	n.cmd.Process.Signal(syscall.SIGINT)
	if code := n.exitCode(t, 5*time.Second); code != 130 {
		t.Errorf("entry after a second SIGINT: exit code %d, want 130", code)
	}
	if !strings.Contains(n.log.String(), "tunnel: second interrupt") {
		t.Errorf("entry log lacks the second-signal line:\n%s", n.log.String())
	}

	x.cmd.Process.Signal(syscall.SIGTERM)
	if code := x.exitCode(t, 15*time.Second); code != 0 {
		t.Errorf("exit after SIGTERM: exit code %d, want 0; log:\n%s", code, x.log.String())
	}
}

// TestSIGHUP runs the real command in child processes: SIGHUP, which used to kill an agent
// with status 129, is logged and changes nothing; a stream open across it keeps working.
func TestSIGHUP(t *testing.T) {
	dir := t.TempDir()
	keyPair(t, dir, "exit")
	keyPair(t, dir, "entry")
	back, _ := backend(t, false)

	x := startChild(t, "--log-format", "json", "exit", "--listen", "127.0.0.1:0", "--forward", back,
		"--key", filepath.Join(dir, "exit.key"), "--authorized-keys", filepath.Join(dir, "entry.pub"))
	exitAddr := x.log.waitJSON(t, "listening")["addr"].(string)
	n := startChild(t, "--log-format", "json", "entry", "--listen", "127.0.0.1:0", "--peer", exitAddr,
		"--key", filepath.Join(dir, "entry.key"), "--peer-key", filepath.Join(dir, "exit.pub"))
	entryAddr := n.log.waitJSON(t, "listening")["addr"].(string)

	app, err := net.Dial("tcp", entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	echo := func(msg string) {
		t.Helper()
		app.SetDeadline(time.Now().Add(15 * time.Second))
		if _, err := app.Write([]byte(msg)); err != nil {
			t.Fatalf("write: %v", err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(app, got); err != nil || string(got) != msg {
			t.Fatalf("echo of %q: %q, %v; entry log:\n%s\nexit log:\n%s", msg, got, err, n.log.String(), x.log.String())
		}
	}
	echo("before")

	for _, c := range []*child{x, n} {
		c.cmd.Process.Signal(syscall.SIGHUP)
		for !strings.Contains(c.log.String(), `"message":"keys reloaded"`) {
			select {
			case <-c.done:
				t.Fatalf("%v ended on SIGHUP: %v; log:\n%s", c.cmd.Args[1:], c.err, c.log.String())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	echo("after")

	app.Close()
	for _, c := range []*child{n, x} {
		c.cmd.Process.Signal(syscall.SIGTERM)
		if code := c.exitCode(t, 15*time.Second); code != 0 {
			t.Errorf("%v after SIGTERM: exit code %d, want 0; log:\n%s", c.cmd.Args[1:], code, c.log.String())
		}
	}
}

// TestSafeDefaults: an entry on an address other hosts can reach says so, once, and an entry on
// loopback or an exit does not; a status address without a host is bound on loopback.
func TestSafeDefaults(t *testing.T) {
	dir := t.TempDir()
	keyPair(t, dir, "k")
	keyPair(t, dir, "x") // the exit's, for the entry to pin: never its own
	const warning = "the plaintext side is reachable from the network: anyone who can connect to this address uses the tunnel; listen on 127.0.0.1 unless another host or container must connect"
	for _, tc := range []struct {
		role, listen string
		warn         bool
	}{
		{"entry", ":0", true},
		{"entry", "0.0.0.0:0", true},
		{"entry", "127.0.0.1:0", false},
		{"exit", ":0", false},
	} {
		args := []string{"--log-format", "json", tc.role, "--listen", tc.listen, "--status-addr", ":0",
			"--key", filepath.Join(dir, "k.key")}
		if tc.role == "entry" {
			args = append(args, "--peer", "127.0.0.1:9", "--peer-key", filepath.Join(dir, "x.pub"))
		} else {
			args = append(args, "--forward", "127.0.0.1:9", "--authorized-keys", filepath.Join(dir, "k.pub"))
		}
		var log logWatch
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int, 1)
		go func() { done <- run(ctx, args, io.Discard, &log, nil) }()
		log.waitJSON(t, tc.role+" ready")
		status := log.waitJSON(t, "status endpoint listening")
		cancel()
		if code := <-done; code != exitOK {
			t.Fatalf("%s --listen %s: exit code %d; log:\n%s", tc.role, tc.listen, code, log.String())
		}
		if host, _, _ := net.SplitHostPort(status["addr"].(string)); host != "127.0.0.1" {
			t.Errorf("--status-addr :0 bound %s, want 127.0.0.1", status["addr"])
		}
		if n := strings.Count(log.String(), `"message":"`+warning+`"`); n != map[bool]int{true: 1, false: 0}[tc.warn] {
			t.Errorf("%s --listen %s: %d warnings about the plaintext side; log:\n%s", tc.role, tc.listen, n, log.String())
		}
	}
}

func TestAgentProcs(t *testing.T) {
	for _, c := range []struct {
		env         string
		avail, want int
	}{
		{"", 1, 1}, {"", 2, 1}, {"", 3, 1}, {"", 8, 4}, {"", 64, 32},
		{"2", 2, 2}, {"8", 8, 8}, // the operator's choice, already applied by the runtime
	} {
		if got := agentProcs(c.env, c.avail); got != c.want {
			t.Errorf("GOMAXPROCS=%q, %d available: %d, want %d", c.env, c.avail, got, c.want)
		}
	}
}
