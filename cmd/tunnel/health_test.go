package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// healthcheck runs `tunnel healthcheck args...` as a child process with env added to its
// environment, and returns its exit code and what it printed.
func healthcheck(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, append([]string{"--log-format", "console", "healthcheck"}, args...)...)
	cmd.Env = append(append(os.Environ(), "TUNNEL_TEST_AS_MAIN=1"), env...)
	out, err := cmd.CombinedOutput()
	if err != nil && cmd.ProcessState == nil {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

// TestHealthcheck runs the agents and `tunnel healthcheck` as real processes: 0 once the entry
// has a session and while the exit's backend accepts connections, 1 otherwise, with the
// reason; readiness goes down when the drain starts.
func TestHealthcheck(t *testing.T) {
	dir := t.TempDir()
	keyPair(t, dir, "exit")
	keyPair(t, dir, "entry")
	back, _ := backend(t, false)
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	goneAddr := gone.Addr().String()
	gone.Close()

	exitArgs := func(forward string) []string {
		return []string{"--log-format", "json", "exit", "--listen", "127.0.0.1:0", "--forward", forward,
			"--status-addr", "127.0.0.1:0", "--key", filepath.Join(dir, "exit.key"),
			"--authorized-keys", filepath.Join(dir, "entry.pub")}
	}
	x := startChild(t, exitArgs(back)...)
	exitAddr := x.log.waitJSON(t, "listening")["addr"].(string)
	exitStatus := x.log.waitJSON(t, "status endpoint listening")["addr"].(string)
	down := startChild(t, exitArgs(goneAddr)...)
	downStatus := down.log.waitJSON(t, "status endpoint listening")["addr"].(string)
	n := startChild(t, "--log-format", "json", "entry", "--listen", "127.0.0.1:0", "--peer", exitAddr,
		"--status-addr", ":0", "--key", filepath.Join(dir, "entry.key"),
		"--peer-key", filepath.Join(dir, "exit.pub"), "--drain-timeout", "60s")
	entryAddr := n.log.waitJSON(t, "listening")["addr"].(string)
	entryStatus := n.log.waitJSON(t, "status endpoint listening")["addr"].(string)
	_, entryPort, _ := net.SplitHostPort(entryStatus)

	// The entry: 0 once its session is up, asked by default URL (from TUNNEL_STATUS_ADDR,
	// given as the agent was: a port alone) and by URL.
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, out := healthcheck(t, []string{"TUNNEL_STATUS_ADDR=:" + entryPort})
		if code == 0 {
			if !strings.Contains(out, "http://127.0.0.1:"+entryPort+"/readyz: 200 OK") {
				t.Errorf("healthcheck printed %q", out)
			}
			break
		}
		if code != 1 || time.Now().After(deadline) {
			t.Fatalf("entry healthcheck: exit code %d, %q; entry log:\n%s", code, out, n.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, args := range [][]string{
		{"http://" + entryStatus + "/readyz"},
		{"--status-addr", exitStatus},
		{"--status-addr", exitStatus, "/healthz"},
		{"--status-addr", downStatus, "/healthz"},
	} {
		if code, out := healthcheck(t, nil, args...); code != 0 {
			t.Errorf("healthcheck %q: exit code %d, %q; want 0", args, code, out)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--status-addr", downStatus}, "503 Service Unavailable: not ready: backend " + goneAddr + " does not accept connections"},
		{[]string{"http://" + goneAddr + "/readyz"}, "connection refused"},
		{nil, "no address to ask"},
		{[]string{"--status-addr", exitStatus, "readyz"}, "give a URL"},
	} {
		code, out := healthcheck(t, nil, tc.args...)
		if code != 1 || !strings.Contains(out, tc.want) {
			t.Errorf("healthcheck %q: exit code %d, %q; want 1 and %q", tc.args, code, out, tc.want)
		}
	}

	// Draining: not ready any more, while a connection still holds the entry open.
	app, err := net.Dial("tcp", entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	app.Write([]byte("x"))
	if _, err := app.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	n.log.waitJSON(t, "stop requested (a second SIGINT/SIGTERM exits at once, without draining)")
	if code, out := healthcheck(t, nil, "--status-addr", entryStatus); code != 1 || !strings.Contains(out, "not ready: shutting down") {
		t.Errorf("healthcheck of a draining entry: exit code %d, %q; want 1, shutting down", code, out)
	}
	app.Close()
	if code := n.exitCode(t, 15*time.Second); code != 0 {
		t.Errorf("entry: exit code %d after the drain", code)
	}
}

// TestHealthcheckTarget: the default URL is /readyz on the status address, with loopback for a
// host that is missing or unspecified.
func TestHealthcheckTarget(t *testing.T) {
	for _, tc := range []struct{ url, addr, want string }{
		{"", ":9070", "http://127.0.0.1:9070/readyz"},
		{"", "0.0.0.0:9070", "http://127.0.0.1:9070/readyz"},
		{"", "[::]:9070", "http://127.0.0.1:9070/readyz"},
		{"", "10.1.2.3:9070", "http://10.1.2.3:9070/readyz"},
		{"", "[::1]:9070", "http://[::1]:9070/readyz"},
		{"/healthz", ":9070", "http://127.0.0.1:9070/healthz"},
		{"http://h:1/x", "", "http://h:1/x"},
	} {
		got, err := (&healthcheckCmd{URL: tc.url, StatusAddr: tc.addr}).target()
		if err != nil || got != tc.want {
			t.Errorf("target(%q, %q) = %q, %v; want %q", tc.url, tc.addr, got, err, tc.want)
		}
	}
}
