package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// StartPostgres runs a throwaway PostgreSQL server and returns its address,
// "127.0.0.1:port". It accepts user "postgres" on database "postgres" with
// trust authentication (no password, no TLS required), runs without fsync,
// and is stopped and deleted in t.Cleanup.
//
// It uses the newest /usr/lib/postgresql/*/bin (Debian's layout) or initdb
// and pg_ctl from PATH. Run as root, it runs them as user "postgres" through
// runuser and keeps the cluster in a directory that user owns. When
// PostgreSQL is not installed the test is skipped, or fails in CI (see
// RequireOrSkip).
func StartPostgres(t testing.TB) string {
	t.Helper()
	addr, _ := StartPostgresUnix(t)
	return addr
}

// StartPostgresUnix is StartPostgres, and also returns the path of the
// server's UNIX socket, in a directory that only the server's user (and
// root) may enter.
func StartPostgresUnix(t testing.TB) (addr, socket string) {
	t.Helper()
	bindir := postgresBinDir()
	RequireOrSkip(t, "PostgreSQL server (initdb and pg_ctl, Debian package postgresql)", bindir != "")
	root := os.Geteuid() == 0
	var uid, gid int
	if root {
		u, err := user.Lookup("postgres")
		RequireOrSkip(t, `user "postgres" (to run PostgreSQL as root)`, err == nil)
		_, rerr := exec.LookPath("runuser")
		RequireOrSkip(t, "runuser (util-linux)", rerr == nil)
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}

	// The cluster lives outside t.TempDir, whose parents only root may enter.
	dir, err := os.MkdirTemp("", "harness-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if root {
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	command := func(name string, args ...string) *exec.Cmd {
		bin := filepath.Join(bindir, name)
		var cmd *exec.Cmd
		if root {
			cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", bin}, args...)...)
		} else {
			cmd = exec.Command(bin, args...)
		}
		cmd.Dir = dir
		return cmd
	}
	data := filepath.Join(dir, "data")
	if out, err := command("initdb", "-D", data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--no-locale", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}

	logFile := filepath.Join(dir, "postgres.log")
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := freePort(t)
		opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s "+
			"-c fsync=off -c synchronous_commit=off -c full_page_writes=off", port, dir)
		out, err := command("pg_ctl", "-D", data, "-l", logFile, "-w", "-t", "60", "-o", opts, "start").CombinedOutput()
		if err != nil {
			logText, _ := os.ReadFile(logFile)
			lastErr = fmt.Errorf("pg_ctl start: %v\n%s\nserver log:\n%s", err, out, logText)
			continue
		}
		t.Cleanup(func() {
			if out, err := command("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop").CombinedOutput(); err != nil {
				t.Errorf("pg_ctl stop: %v\n%s", err, out)
			}
		})
		return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), filepath.Join(dir, ".s.PGSQL."+strconv.Itoa(port))
	}
	t.Fatalf("starting PostgreSQL: %v", lastErr)
	return "", ""
}

// postgresBinDir returns the directory of the newest installed PostgreSQL
// server programs, or "".
func postgresBinDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if fileExists(filepath.Join(d, "initdb")) && fileExists(filepath.Join(d, "pg_ctl")) {
			return d
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if d := filepath.Dir(p); fileExists(filepath.Join(d, "pg_ctl")) {
			return d
		}
	}
	return ""
}

func pgVersion(bindir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(bindir)), 64)
	return v
}

// StartRedis runs a throwaway redis-server without persistence and returns
// its address, "127.0.0.1:port"; it is killed in t.Cleanup. When
// redis-server is not installed the test is skipped, or fails in CI (see
// RequireOrSkip).
func StartRedis(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	RequireOrSkip(t, "redis-server (Debian package redis-server)", err == nil)
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := freePort(t)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir, "--protected-mode", "no")
		var out SyncBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting redis-server: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop := func() {
			cmd.Process.Kill()
			<-exited
		}
		if err := waitRedis(addr, exited, 30*time.Second); err != nil {
			stop()
			lastErr = fmt.Errorf("%v\nredis-server output:\n%s", err, out.String())
			continue
		}
		t.Cleanup(stop)
		return addr
	}
	t.Fatalf("starting redis-server: %v", lastErr)
	return ""
}

// waitRedis waits until the server at addr answers PING.
func waitRedis(addr string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited")
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Write([]byte("PING\r\n"))
			var reply string
			if err == nil {
				reply, err = bufio.NewReader(c).ReadString('\n')
			}
			c.Close()
			if err == nil && strings.HasPrefix(reply, "+PONG") {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("PING answered %q", reply)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis at %s not ready after %v: %v", addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process may take it before the caller binds it, so callers retry.
func FreePort(t testing.TB) int {
	t.Helper()
	return freePort(t)
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// SyncBuffer is a bytes.Buffer that is safe for concurrent use, such as
// the Stdout and Stderr of an exec.Cmd read while the command runs.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
