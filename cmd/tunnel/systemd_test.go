package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/config"
	"github.com/tunnel-dev/tunnel/integration/harness"
	"github.com/tunnel-dev/tunnel/tunnel"
	"github.com/tunnel-dev/tunnel/tunnel/listen"
)

// notifySocket plays the service manager's end of the notify protocol: a unixgram socket (the
// agent's NOTIFY_SOCKET) that keeps every state the agent sends. Safe for concurrent use.
type notifySocket struct {
	path string

	mu     sync.Mutex
	states []string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	// A short directory: a socket's path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "sd")
	if err != nil {
		t.Fatal(err)
	}
	s := &notifySocket{path: filepath.Join(dir, "notify")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: s.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { conn.Close(); <-done; os.RemoveAll(dir) })
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.states = append(s.states, string(buf[:n]))
			s.mu.Unlock()
		}
	}()
	return s
}

// count is how many states have arrived.
func (s *notifySocket) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.states)
}

// wait waits for the first state from the from-th on that has the line want (such as
// READY=1), and returns its index and its lines as a map. It fails the test if c ends
// without it: a state c sent just before it ended may still be on its way to the reader, so
// that is judged a second after c ended.
func (s *notifySocket) wait(t *testing.T, c *child, from int, want string) (int, map[string]string) {
	t.Helper()
	var ended time.Time
	for deadline := time.Now().Add(20 * time.Second); ; {
		s.mu.Lock()
		states := s.states
		s.mu.Unlock()
		for i := from; i < len(states); i++ {
			lines := strings.Split(states[i], "\n")
			for _, l := range lines {
				if l != want {
					continue
				}
				m := map[string]string{}
				for _, l := range lines {
					k, v, _ := strings.Cut(l, "=")
					m[k] = v
				}
				return i, m
			}
		}
		select {
		case <-c.done:
			if ended.IsZero() {
				ended = time.Now()
			} else if time.Since(ended) > time.Second {
				t.Fatalf("%v ended before notifying %s: %v; states %q; log:\n%s", c.cmd.Args[1:], want, c.err, states, c.log.String())
			}
			time.Sleep(10 * time.Millisecond)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v: no %s within 20s; states %q; log:\n%s", c.cmd.Args[1:], want, states, c.log.String())
		}
	}
}

// socketFile returns a descriptor of ln (a *net.TCPListener or *net.UnixListener) to pass on.
func socketFile(t *testing.T, ln any) *os.File {
	t.Helper()
	f, err := ln.(interface{ File() (*os.File, error) }).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// underSystemd makes cmd run as systemd runs a service: NOTIFY_SOCKET is notify's path (none if
// nil), with the environment env added, and files passed as socket activation passes them,
// from descriptor 3 on, named by names. systemd sets LISTEN_PID to the service's pid between
// fork and exec; here a shell does, and execs the command in its own place, which keeps both
// its pid and the descriptors.
func underSystemd(notify *notifySocket, names []string, files []*os.File, env ...string) func(*exec.Cmd) {
	return func(cmd *exec.Cmd) {
		cmd.Args = append([]string{"/bin/sh", "-c", `export LISTEN_PID=$$; exec "$0" "$@"`, cmd.Path}, cmd.Args[1:]...)
		cmd.Path = "/bin/sh"
		cmd.Env = append(cmd.Env, env...)
		if notify != nil {
			cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+notify.path)
		}
		if len(files) > 0 {
			cmd.ExtraFiles = files
			cmd.Env = append(cmd.Env, "LISTEN_FDS="+strconv.Itoa(len(files)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
		}
	}
}

// TestSystemd runs both agents as systemd would run them, with the real binary and no
// systemd: each gets its sockets by socket activation (the flags name addresses that are
// taken, so that binding them would fail) and notifies a socket of the test's. READY=1 comes
// once every listener is bound and, on the entry, once the session is up (its /readyz answers
// 200 then); data flows through the passed sockets; a SIGHUP is bracketed by RELOADING=1 (with
// MONOTONIC_USEC) and READY=1; SIGTERM notifies STOPPING=1; WatchdogSec= gets WATCHDOG=1.
func TestSystemd(t *testing.T) {
	dir := t.TempDir()
	keyPair(t, dir, "exit")
	keyPair(t, dir, "entry")
	back, _ := backend(t, false)
	listen := func(network string) net.Listener {
		ln, err := net.Listen(network, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}

	exitLn := listen("tcp")
	exitAddr := exitLn.Addr().String()
	exitNotify := listenNotify(t)
	x := startChildWith(t, underSystemd(exitNotify, []string{"listen"}, []*os.File{socketFile(t, exitLn)}, "WATCHDOG_USEC=100000"),
		"--log-format", "json", "exit", "--listen", exitAddr, "--forward", back,
		"--key", filepath.Join(dir, "exit.key"), "--authorized-keys", filepath.Join(dir, "entry.pub"))
	_, ready := exitNotify.wait(t, x, 0, "READY=1")
	if want := "exit listening on " + exitAddr; ready["STATUS"] != want {
		t.Errorf("exit: READY=1 with STATUS=%q, want %q", ready["STATUS"], want)
	}
	if l := x.waitLine(t, "listening", 1); l["addr"] != exitAddr || l["systemd_socket"] != true {
		t.Errorf("exit: listening line %v, want addr %s and systemd_socket true", l, exitAddr)
	}
	exitNotify.wait(t, x, 0, "WATCHDOG=1")

	entryLn, statusLn := listen("tcp"), listen("tcp")
	entryAddr, statusAddr := entryLn.Addr().String(), statusLn.Addr().String()
	entryNotify := listenNotify(t)
	n := startChildWith(t, underSystemd(entryNotify, []string{"listen", "status"}, []*os.File{socketFile(t, entryLn), socketFile(t, statusLn)}),
		"--log-format", "json", "entry", "--listen", entryAddr, "--peer", exitAddr,
		"--key", filepath.Join(dir, "entry.key"), "--peer-key", filepath.Join(dir, "exit.pub"))
	_, ready = entryNotify.wait(t, n, 0, "READY=1")
	if want := "entry listening on " + entryAddr + "; session with the exit up"; ready["STATUS"] != want {
		t.Errorf("entry: READY=1 with STATUS=%q, want %q", ready["STATUS"], want)
	}
	resp, err := http.Get("http://" + statusAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("entry /readyz on the passed status socket, once READY=1: %d, want 200", resp.StatusCode)
	}
	http.DefaultClient.CloseIdleConnections()
	if err := echoOnce(entryAddr, 64<<10); err != nil {
		t.Fatalf("through the passed sockets: %v; entry log:\n%s\nexit log:\n%s", err, n.log.String(), x.log.String())
	}

	from := entryNotify.count()
	n.cmd.Process.Signal(syscall.SIGHUP)
	i, reloading := entryNotify.wait(t, n, from, "RELOADING=1")
	if usec, err := strconv.ParseInt(reloading["MONOTONIC_USEC"], 10, 64); err != nil || usec <= 0 {
		t.Errorf("RELOADING=1 with MONOTONIC_USEC=%q, want the monotonic clock in microseconds", reloading["MONOTONIC_USEC"])
	}
	entryNotify.wait(t, n, i+1, "READY=1")
	n.waitLine(t, reloaded, 1)

	for _, a := range []struct {
		c      *child
		notify *notifySocket
	}{{n, entryNotify}, {x, exitNotify}} {
		from := a.notify.count()
		a.c.cmd.Process.Signal(syscall.SIGTERM)
		a.notify.wait(t, a.c, from, "STOPPING=1")
		if code := a.c.exitCode(t, 15*time.Second); code != 0 {
			t.Errorf("%v after SIGTERM: exit code %d, want 0; log:\n%s", a.c.cmd.Args[1:], code, a.c.log.String())
		}
	}
}

// TestSystemdNoExit: an entry whose exit cannot be reached notifies READY=1 once the first
// attempt has failed, saying so, rather than keeping systemd waiting; it binds its own
// listener when no socket is passed.
func TestSystemdNoExit(t *testing.T) {
	dir := t.TempDir()
	keyPair(t, dir, "exit")
	keyPair(t, dir, "entry")
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	goneAddr := gone.Addr().String()
	gone.Close()
	notify := listenNotify(t)
	n := startChildWith(t, underSystemd(notify, nil, nil),
		"--log-format", "json", "entry", "--listen", "127.0.0.1:0", "--peer", goneAddr,
		"--key", filepath.Join(dir, "entry.key"), "--peer-key", filepath.Join(dir, "exit.pub"))
	_, ready := notify.wait(t, n, 0, "READY=1")
	addr := n.waitLine(t, "listening", 1)["addr"]
	if want := "entry listening on " + addr.(string) + "; no session with the exit: "; !strings.HasPrefix(ready["STATUS"], want) || !strings.HasSuffix(ready["STATUS"], "; retrying") {
		t.Errorf("READY=1 with STATUS=%q, want it to start %q and end with retrying", ready["STATUS"], want)
	}
}

// TestSocketActivationErrors: every socket passed must be used, so a socket the agent has no
// use for, or one it cannot use, stops it with exit status 2 and what to change in the unit.
func TestSocketActivationErrors(t *testing.T) {
	dir := t.TempDir()
	keyPair(t, dir, "k")
	keyPair(t, dir, "x") // the exit's, for the entry to pin: never its own
	tcp := func() *os.File {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return socketFile(t, ln)
	}
	unixSock := func() *os.File {
		ln, err := net.Listen("unix", filepath.Join(dir, "app.sock"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return socketFile(t, ln)
	}
	udp := func() *os.File {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return socketFile(t, c)
	}
	seqpacket := func() *os.File { // what ListenSequentialPacket= passes
		ln, err := net.Listen("unixpacket", filepath.Join(dir, "seq.sock"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return socketFile(t, ln)
	}
	accepted := func() *os.File { // what Accept=yes passes
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		return socketFile(t, s)
	}
	for _, tc := range []struct {
		name  string
		names []string
		files []*os.File
		want  string
		exit  bool // run the exit, not the entry
	}{
		{"an accepted connection", []string{"listen"}, []*os.File{accepted()},
			"tunnel: socket activation: socket listen (fd 3): not a listening stream socket (it does not listen): the .socket unit must bind it with ListenStream=, and Accept=no", false},
		{"systemd's default name", []string{"tunnel-entry.socket"}, []*os.File{tcp()},
			`tunnel: socket activation: fd 3 is named "tunnel-entry.socket": the agent takes sockets named listen (for --listen) and status (for --status-addr): set FileDescriptorName=listen or FileDescriptorName=status on each ListenStream= of the .socket unit`, false},
		{"an unnamed extra socket", []string{"listen"}, []*os.File{tcp(), tcp()},
			`tunnel: socket activation: fd 4 is named "LISTEN_FD_4": the agent takes sockets named listen`, false},
		{"two listen sockets", []string{"listen", "listen"}, []*os.File{tcp(), tcp()},
			"tunnel: socket activation: socket listen (fd 4): a second socket named listen: the agent serves one; give the .socket unit one ListenStream= per name", false},
		{"a unix listen socket for the exit", []string{"listen"}, []*os.File{unixSock()},
			"tunnel: socket activation: socket listen (fd 3): it is a unix socket (" + filepath.Join(dir, "app.sock") + "), and the exit accepts entry agents over TCP only: give ListenStream= an address and port, such as 0.0.0.0:7000", true},
		{"a datagram status socket", []string{"status"}, []*os.File{udp()},
			"tunnel: socket activation: socket status (fd 3): not a listening stream socket (it is a datagram (SOCK_DGRAM; ListenDatagram=) socket, not SOCK_STREAM)", false},
		{"a listening SOCK_SEQPACKET socket", []string{"listen"}, []*os.File{seqpacket()},
			"tunnel: socket activation: socket listen (fd 3): not a listening stream socket (it is a SOCK_SEQPACKET (ListenSequentialPacket=) socket, not SOCK_STREAM): the .socket unit must bind it with ListenStream=", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"--log-format", "console", "entry", "--listen", "127.0.0.1:0", "--peer", "127.0.0.1:9",
				"--key", filepath.Join(dir, "k.key"), "--peer-key", filepath.Join(dir, "x.pub")}
			if tc.exit {
				args = []string{"--log-format", "console", "exit", "--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9",
					"--key", filepath.Join(dir, "k.key"), "--authorized-keys", filepath.Join(dir, "k.pub")}
			}
			c := startChildWith(t, underSystemd(nil, tc.names, tc.files), args...)
			if code := c.exitCode(t, 15*time.Second); code != exitUsage || !strings.Contains(c.log.String(), tc.want) {
				t.Errorf("exit code %d, stderr:\n%s\nwant %d and %q", code, c.log.String(), exitUsage, tc.want)
			}
		})
	}
}

// TestSocketActivationUnix: the entry serves applications on a UNIX socket that systemd
// passes (ListenStream=/path), without a warning that it is reachable from the network, and
// leaves the socket file to systemd when it stops.
func TestSocketActivationUnix(t *testing.T) {
	dir := t.TempDir()
	keyPair(t, dir, "k")
	keyPair(t, dir, "x") // the exit's, for the entry to pin: never its own
	path := filepath.Join(dir, "app.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // the file is systemd's
	f := socketFile(t, ln)
	ln.Close()
	n := startChildWith(t, underSystemd(nil, []string{"listen"}, []*os.File{f}),
		"--log-format", "json", "entry", "--peer", "127.0.0.1:9", "--dial-timeout", "1s",
		"--key", filepath.Join(dir, "k.key"), "--peer-key", filepath.Join(dir, "x.pub"))
	l := n.waitLine(t, "listening", 1)
	if l["addr"] != path || l["systemd_socket"] != true {
		t.Errorf("listening line %v, want addr %s from systemd", l, path)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// No exit answers at 127.0.0.1:9: the entry closes the connection, and says why.
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the entry sent bytes without an exit")
	}
	n.waitLine(t, "closing application connection: no session with the exit", 1)
	n.cmd.Process.Signal(syscall.SIGTERM)
	if code := n.exitCode(t, 15*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM; log:\n%s", code, n.log.String())
	}
	if strings.Contains(n.log.String(), "reachable from the network") {
		t.Errorf("the entry warned that its UNIX socket is reachable from the network:\n%s", n.log.String())
	}
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("the entry removed systemd's socket file: %v", err)
	}
}

// TestSystemdCredential: a private key that systemd passes as a credential (LoadCredential=)
// is accepted with the mode systemd gives it when the service runs as another user (0440: an
// ACL entry lets that user read it); the same mode elsewhere is refused, as is a path that only
// starts in the credentials directory.
func TestSystemdCredential(t *testing.T) {
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials")
	if err := os.Mkdir(creds, 0o700); err != nil {
		t.Fatal(err)
	}
	keyPair(t, creds, "k")
	keyPair(t, dir, "k")
	for _, p := range []string{filepath.Join(creds, "k.key"), filepath.Join(dir, "k.key")} {
		if err := os.Chmod(p, 0o440); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	if _, err := loadPrivateKey(filepath.Join(creds, "k.key"), false); err != nil {
		t.Errorf("a credential with mode 0440: %v", err)
	}
	for _, p := range []string{filepath.Join(dir, "k.key"), filepath.Join(creds, "..", "k.key")} {
		if _, err := loadPrivateKey(p, false); err == nil || !strings.Contains(err.Error(), "mode 0440 lets group or others access this private key") {
			t.Errorf("%s, mode 0440, outside $CREDENTIALS_DIRECTORY: %v, want refused", p, err)
		}
	}

	for _, tc := range []struct {
		path, credDir string
		want          bool
	}{
		{"/run/credentials/tunnel-exit.service/exit.key", "/run/credentials/tunnel-exit.service", true},
		{"/run/credentials/tunnel-exit.service/exit.key", "/run/credentials/tunnel-exit.service/", true},
		{"/run/credentials/tunnel-exit.service/../other.service/exit.key", "/run/credentials/tunnel-exit.service", false},
		{"/run/credentials/tunnel-exit.service2/exit.key", "/run/credentials/tunnel-exit.service", false},
		{"/etc/tunnel/exit.key", "/run/credentials/tunnel-exit.service", false},
		{"/etc/tunnel/exit.key", "", false},
		{"exit.key", "relative", false},
	} {
		if got := systemdCredential(tc.path, tc.credDir); got != tc.want {
			t.Errorf("systemdCredential(%q, %q) = %v, want %v", tc.path, tc.credDir, got, tc.want)
		}
	}
}

// unitFile is a systemd unit file's settings: key to values, in order, continuation lines
// joined.
type unitFile map[string][]string

func readUnit(t *testing.T, path string) unitFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	text := strings.ReplaceAll(string(data), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not KEY=VALUE", path, line)
		}
		u[k] = append(u[k], strings.TrimSpace(v))
	}
	return u
}

// TestSystemdUnits checks the example units in examples/systemd against the command: each
// service's ExecStart parses as tunnel's flags, its key is the credential it loads, the sockets
// it takes exist and carry names the agent takes, and the sandbox is there. systemd-analyze
// verify, where installed, must find nothing to say about them.
func TestSystemdUnits(t *testing.T) {
	const dir = "../../examples/systemd"
	services, _ := filepath.Glob(filepath.Join(dir, "*.service"))
	sockets, _ := filepath.Glob(filepath.Join(dir, "*.socket"))
	if len(services) != 2 || len(sockets) == 0 {
		t.Fatalf("examples/systemd: services %q, sockets %q; want the exit's and the entry's", services, sockets)
	}
	for _, path := range sockets {
		u := readUnit(t, path)
		if names := u["FileDescriptorName"]; len(names) != 1 || (names[0] != socketListen && names[0] != socketStatus) {
			t.Errorf("%s: FileDescriptorName=%q, want one of listen, status", path, names)
		}
		if acc := u["Accept"]; len(acc) > 0 && acc[0] != "no" {
			t.Errorf("%s: Accept=%s: the agent takes a listening socket (Accept=no)", path, acc[0])
		}
	}
	for _, path := range services {
		u := readUnit(t, path)
		role := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(path), "tunnel-"), ".service")
		creds := t.TempDir()
		cmdline := strings.Fields(strings.Join(u["ExecStart"], " "))
		if len(cmdline) < 2 || cmdline[0] != "/usr/local/bin/tunnel" || cmdline[1] != role {
			t.Fatalf("%s: ExecStart=%q, want /usr/local/bin/tunnel %s ...", path, cmdline, role)
		}
		args := strings.Fields(strings.ReplaceAll(strings.Join(cmdline[1:], " "), "%d", creds))
		c, _, err := parse(args, new(strings.Builder), new(strings.Builder), &configSource{})
		if err != nil {
			t.Errorf("%s: ExecStart: %v", path, err)
			continue
		}
		key := c.Exit.Key
		if role == "entry" {
			key = c.Entry.Key
		}
		loaded := u["LoadCredential"]
		if len(loaded) != 1 || filepath.Join(creds, strings.SplitN(loaded[0], ":", 2)[0]) != key {
			t.Errorf("%s: --key %s is not the credential of LoadCredential=%q", path, key, loaded)
		}
		want := []string{"tunnel-" + role + ".socket"}
		if s := u["Sockets"]; len(s) > 0 {
			want = strings.Fields(s[0])
		}
		for _, s := range want {
			if _, err := os.Stat(filepath.Join(dir, s)); err != nil {
				t.Errorf("%s takes the sockets of %s: %v", path, s, err)
			}
		}
		for k, v := range map[string]string{
			"Type": "notify", "ExecReload": "/bin/kill -HUP $MAINPID", "DynamicUser": "yes",
			"NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "ProtectSystem": "strict",
			"ProtectHome": "yes", "PrivateTmp": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		} {
			if got := u[k]; len(got) != 1 || got[0] != v {
				t.Errorf("%s: %s=%q, want %q", path, k, got, v)
			}
		}
		if !slices.Contains(u["SystemCallFilter"], "@system-service") {
			t.Errorf("%s: SystemCallFilter=%q, want @system-service among them", path, u["SystemCallFilter"])
		}
	}

	analyze, err := exec.LookPath("systemd-analyze")
	harness.RequireOrSkip(t, "systemd-analyze (Debian package systemd)", err == nil)
	// verify wants the program of ExecStart to exist: this test's binary stands in.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	var units []string
	for _, path := range append(services, sockets...) {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(tmp, filepath.Base(path))
		if err := os.WriteFile(dst, bytes.ReplaceAll(data, []byte("/usr/local/bin/tunnel"), []byte(self)), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, dst)
	}
	out, err := exec.Command(analyze, append([]string{"verify"}, units...)...).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestServeEndsBeforeReady: an agent whose serving ends with an error while the entry still
// waits for its first attempt to reach the exit returns that error; the wait for READY=1 does
// not hold it.
func TestServeEndsBeforeReady(t *testing.T) {
	failed := errors.New("accept: too many open files")
	done := make(chan error, 1)
	go func() {
		done <- serve(&env{ctx: context.Background(), log: zerolog.Nop()}, agent{
			role: "entry", listen: []config.EntryListener{{Addr: "127.0.0.1:0"}},
			serve: func(_ context.Context, lns []tunnel.ServiceListener) error { lns[0].Listener.Close(); return failed },
			// No attempt ever ends.
			attempted: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() },
			readiness: func(context.Context) error { return nil },
			ready:     func(ev *zerolog.Event) *zerolog.Event { return ev },
		})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, failed) {
			t.Errorf("serve = %v, want %v", err, failed)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not return within 20s of its agent's error: the wait for READY=1 holds it")
	}
}

// TestWatchdogPing: the watchdog is pinged while the agent is healthy, and not while it is not;
// the first unhealthy tick says why in STATUS=, the next ones send nothing.
func TestWatchdogPing(t *testing.T) {
	notify := listenNotify(t)
	t.Setenv("NOTIFY_SOCKET", notify.path)
	var logs bytes.Buffer
	n := &notifier{log: zerolog.New(&logs)}
	// next sends a marker after what the ticks sent, and returns what came before it: the
	// socket delivers in order.
	seen := 0
	next := func() []string {
		t.Helper()
		n.send("MARK=1")
		deadline := time.Now().Add(10 * time.Second)
		for {
			notify.mu.Lock()
			states := slices.Clone(notify.states[seen:])
			notify.mu.Unlock()
			if i := slices.Index(states, "MARK=1"); i >= 0 {
				seen += i + 1
				return states[:i]
			}
			if time.Now().After(deadline) {
				t.Fatalf("the marker did not arrive within 10s: %q", states)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	if withheld := n.ping(nil, false); withheld {
		t.Error("ping(healthy) withheld the ping")
	}
	if got := next(); !slices.Equal(got, []string{"WATCHDOG=1"}) {
		t.Errorf("healthy: sent %q, want WATCHDOG=1", got)
	}
	bad := errors.New("accepting connections on 127.0.0.1:7000 has failed for 30s")
	withheld := n.ping(bad, false)
	if got := next(); !withheld || !slices.Equal(got, []string{"STATUS=unhealthy: " + bad.Error()}) {
		t.Errorf("unhealthy: sent %q (withheld %v), want only STATUS= with the reason", got, withheld)
	}
	withheld = n.ping(bad, withheld)
	if got := next(); !withheld || len(got) != 0 {
		t.Errorf("still unhealthy: sent %q (withheld %v), want nothing", got, withheld)
	}
	if n.ping(nil, withheld) {
		t.Error("ping(healthy again) withheld the ping")
	}
	if got := next(); !slices.Equal(got, []string{"WATCHDOG=1"}) {
		t.Errorf("healthy again: sent %q, want WATCHDOG=1", got)
	}
	if c := strings.Count(logs.String(), "not pinging it"); c != 1 {
		t.Errorf("%d log lines about withholding the ping, want 1:\n%s", c, logs.String())
	}
}

// stuckListener fails its first Accept with EMFILE, and blocks the next ones until closed,
// closing retried when the second starts.
type stuckListener struct {
	net.Listener // for Addr
	calls        atomic.Int32
	retried      chan struct{}
	closed       chan struct{}
	once         sync.Once
}

func (l *stuckListener) Accept() (net.Conn, error) {
	switch l.calls.Add(1) {
	case 1:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	case 2:
		close(l.retried)
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *stuckListener) Close() error { l.once.Do(func() { close(l.closed) }); return nil }

// TestAcceptHealth: an agent whose accepts have failed in a row for a watchdog interval is
// unhealthy; one whose accepts fail for less, or succeed, is not.
func TestAcceptHealth(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	good := listen.NewRetrying(ln, zerolog.Nop())
	stuck := &stuckListener{Listener: ln, retried: make(chan struct{}), closed: make(chan struct{})}
	bad := listen.NewRetrying(stuck, zerolog.Nop())
	done := make(chan struct{})
	go func() { defer close(done); bad.Accept() }()
	defer func() { bad.Close(); <-done }()
	<-stuck.retried // Accept failed, waited, and tries again

	now := time.Now()
	lns := []*listen.Retrying{good, bad}
	if err := acceptHealth(lns, now.Add(time.Hour), 30*time.Second); err == nil || !strings.Contains(err.Error(), "accepting connections on "+ln.Addr().String()+" has failed for") {
		t.Errorf("accepts failing for an hour, watchdog 30s: %v, want unhealthy", err)
	}
	if err := acceptHealth(lns, now, time.Hour); err != nil {
		t.Errorf("accepts failing for less than the watchdog interval: %v, want healthy", err)
	}
	if err := acceptHealth(lns[:1], now.Add(time.Hour), time.Second); err != nil {
		t.Errorf("accepts not failing: %v, want healthy", err)
	}
}
