package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// nginxStream runs nginx with one stream listener that takes the PROXY
// protocol, answers each connection with the address the header gave
// ($proxy_protocol_addr:$proxy_protocol_port) and logs it, and returns its
// address and the path of its access log. It stops in t.Cleanup.
func nginxStream(t *testing.T) (addr, accessLog string) {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin = "/usr/sbin/nginx"
	}
	const module = "/usr/lib/nginx/modules/ngx_stream_module.so"
	_, berr := os.Stat(bin)
	_, merr := os.Stat(module)
	harness.RequireOrSkip(t, "nginx with its stream module (Debian packages nginx and libnginx-mod-stream)", berr == nil && merr == nil)
	dir := t.TempDir()
	accessLog = filepath.Join(dir, "access.log")
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(t)))
		conf := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(conf, []byte(fmt.Sprintf(`load_module %s;
daemon off;
master_process off;
pid %s/nginx.pid;
error_log %s/error.log info;
events { worker_connections 64; }
stream {
	log_format pp "$proxy_protocol_addr:$proxy_protocol_port via $remote_addr";
	server {
		listen %s proxy_protocol;
		access_log %s pp;
		return "$proxy_protocol_addr:$proxy_protocol_port\n";
	}
}
`, module, dir, dir, addr, accessLog)), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", conf)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case err := <-exited:
				logText, _ := os.ReadFile(filepath.Join(dir, "error.log"))
				lastErr = fmt.Errorf("nginx exited: %v\n%s", err, logText)
			default:
				if c, err := net.Dial("tcp", addr); err == nil {
					c.Close()
					t.Cleanup(func() { cmd.Process.Kill(); <-exited })
					return addr, accessLog
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
			break
		}
		if lastErr == nil {
			cmd.Process.Kill()
			<-exited
			lastErr = fmt.Errorf("nginx did not listen on %s within 30 s", addr)
		}
	}
	t.Fatalf("starting nginx: %v", lastErr)
	return "", ""
}

// TestProxyProtocolNginx: the exit sends a PROXY protocol v2 header to a
// real nginx for the service that asks for it, and nginx sees (answers and
// logs) the application's own address; another service of the same exit,
// without the option, carries the application's bytes unchanged.
func TestProxyProtocolNginx(t *testing.T) {
	t.Parallel()
	nginx, accessLog := nginxStream(t)
	echo := harness.StartHashEcho(t)
	r := harness.NewRig(t)
	exit, xaddrs, _ := startAgent(t, r.Bin, 1, "exit", "--listen", "127.0.0.1:0",
		"--forward", "web="+nginx, "--forward", "echo="+echo.Addr(), "--proxy-protocol", "web",
		"--key", r.Exit.Key, "--authorized-keys", r.Entry.Pub, "--status-addr", "127.0.0.1:0")
	entry, addrs, _ := startAgent(t, r.Bin, 2, "entry", "--peer", xaddrs[""], "--key", r.Entry.Key,
		"--peer-key", r.Exit.Pub, "--listen", "127.0.0.1:0=web", "--listen", "127.0.0.1:0=echo", "--status-addr", "127.0.0.1:0")

	c := harness.Dial(t, addrs["web"], 30*time.Second)
	app := c.LocalAddr().String()
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil || strings.TrimSpace(line) != app {
		t.Fatalf("nginx answered %q, %v; want the application's address %s", line, err, app)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(accessLog)
		if strings.Contains(string(b), app+" via ") {
			t.Logf("nginx access log: %s", strings.TrimSpace(string(b)))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx's access log does not show the application's address %s:\n%s", app, b)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Without the option: the hash echo checks every byte both ways.
	if err := harness.Exchange(addrs["echo"], 4<<20, 7, 60*time.Second); err != nil {
		t.Fatalf("service without PROXY protocol: %v", err)
	}
	if echo.Accepted() != 1 {
		t.Errorf("echo backend accepted %d connections, want 1", echo.Accepted())
	}
	exit.CheckNoErrors(t)
	entry.CheckNoErrors(t)
}
