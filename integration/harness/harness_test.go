package harness

import (
	"bufio"
	"encoding/json"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMain(m *testing.M) { Main(m) }

// TestRig starts a tunnel whose agents log every line and one whose
// agents are quiet, and carries an exchange through each; it checks the
// addresses and status endpoints the rig reports.
func TestRig(t *testing.T) {
	r := NewRig(t)
	backend := StartHashEcho(t)
	for _, quiet := range []bool{false, true} {
		o := Options{Status: true, Quiet: quiet, NoErrors: true}
		tun := r.StartTunnel(t, backend.Addr(), o, o)
		if err := Exchange(tun.Entry.Addr, 100<<10, 1, time.Minute); err != nil {
			t.Fatalf("quiet %v: exchange through the entry: %v", quiet, err)
		}
		for _, a := range []*Agent{tun.Entry, tun.Exit} {
			var st struct {
				Role     string `json:"role"`
				Sessions int    `json:"sessions"`
			}
			body, err := a.Get("/status")
			if err == nil {
				err = json.Unmarshal(body, &st)
			}
			if err != nil || st.Role != a.Role || st.Sessions != 1 {
				t.Errorf("quiet %v: %s /status: %+v, %v; want role %s and 1 session", quiet, a.Role, st, err, a.Role)
			}
			if n := a.Count(Level("info")); quiet && n != 0 {
				t.Errorf("quiet %s logged %d info lines", a.Role, n)
			}
		}
	}
}

// TestHashEchoDirect checks the HashEcho backend and its client without a
// tunnel in between, including an empty payload and a corrupting relay.
func TestHashEchoDirect(t *testing.T) {
	b := StartHashEcho(t)
	var wg sync.WaitGroup
	for i, size := range []int64{0, 1, 1000, 3 << 20} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", b.Addr())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if err := HashEchoExchange(c.(*net.TCPConn), size, uint64(i)); err != nil {
				t.Errorf("size %d: %v", size, err)
			}
		}()
	}
	wg.Wait()
	if got := b.Accepted(); got != 4 {
		t.Errorf("Accepted() = %d, want 4", got)
	}
}

// TestHashEchoDetectsCorruption puts a relay that flips one byte of the
// reply between client and backend; the exchange must fail.
func TestHashEchoDetectsCorruption(t *testing.T) {
	b := StartHashEcho(t)
	relay := StartBackend(t, func(c net.Conn) {
		up, err := net.Dial("tcp", b.Addr())
		if err != nil {
			return
		}
		defer up.Close()
		go func() {
			buf := make([]byte, 4096)
			for {
				n, err := c.Read(buf)
				up.Write(buf[:n])
				if err != nil {
					up.(*net.TCPConn).CloseWrite()
					return
				}
			}
		}()
		buf := make([]byte, 4096)
		flipped := false
		for {
			n, err := up.Read(buf)
			if n > 0 && !flipped {
				buf[n/2] ^= 1
				flipped = true
			}
			c.Write(buf[:n])
			if err != nil {
				return
			}
		}
	})
	c, err := net.Dial("tcp", relay.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := HashEchoExchange(c.(*net.TCPConn), 100000, 7); err == nil {
		t.Fatal("HashEchoExchange accepted a corrupted reply")
	}
}

func TestStartPostgres(t *testing.T) {
	addr := StartPostgres(t)
	psql, err := exec.LookPath("psql")
	RequireOrSkip(t, "psql", err == nil)
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command(psql, "-h", host, "-p", port, "-U", "postgres", "-d", "postgres",
		"-XAtc", "select 6*7").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "42" {
		t.Fatalf("psql: %v, output %q", err, out)
	}
}

func TestStartRedis(t *testing.T) {
	addr := StartRedis(t)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("SET k hello\r\nGET k\r\n"))
	r := bufio.NewReader(c)
	for _, want := range []string{"+OK\r\n", "$5\r\n", "hello\r\n"} {
		got, err := r.ReadString('\n')
		if err != nil || got != want {
			t.Fatalf("got %q, %v; want %q", got, err, want)
		}
	}
}

// TestProc drives Start with /bin/sh standing in for the binary (the
// appended "--log-format json" become the script's $0 and $1).
func TestProc(t *testing.T) {
	p := Start(t, "/bin/sh", "-c", `echo "fmt=$1" >&2
printf '%s\n' '{"level":"info","role":"exit","message":"listening","addr":"127.0.0.1:1234"}' >&2
echo out
exec sleep 30`)
	if got := p.ListenAddr(t); got != "127.0.0.1:1234" {
		t.Errorf("ListenAddr = %q", got)
	}
	if got := p.WaitLog(t, "fmt=json", 5*time.Second); got != "fmt=json" {
		t.Errorf("WaitLog = %q", got)
	}
	if n := p.Count(MessageIs("listening")); n != 1 {
		t.Errorf("Count = %d", n)
	}
	if code := p.Wait(100 * time.Millisecond); code != -2 {
		t.Errorf("Wait on a running process = %d, want -2", code)
	}
	if code := p.Stop(t, 5*time.Second); code != -1 {
		t.Errorf("exit code after SIGTERM = %d, want -1 (killed by signal)", code)
	}
	if p.Stdout() != "out\n" {
		t.Errorf("Stdout = %q", p.Stdout())
	}

	q := Start(t, "/bin/sh", "-c", "exit 3")
	if code := q.Wait(5 * time.Second); code != 3 {
		t.Errorf("exit code = %d, want 3", code)
	}
}

// TestProcCrash checks that a race report on stderr fails the test.
func TestProcCrash(t *testing.T) {
	ft := &fakeTB{TB: t}
	func() {
		defer func() { ft.runCleanups() }()
		p := Start(ft, "/bin/sh", "-c", `echo "WARNING: DATA RACE" >&2`)
		p.Wait(5 * time.Second)
	}()
	if !ft.failed {
		t.Fatal("a race report did not fail the test")
	}
}

// fakeTB records failures and cleanups instead of acting on them.
type fakeTB struct {
	testing.TB
	failed   bool
	cleanups []func()
}

func (f *fakeTB) Errorf(string, ...any) { f.failed = true }
func (f *fakeTB) Logf(string, ...any)   {}
func (f *fakeTB) Failed() bool          { return f.failed }
func (f *fakeTB) Cleanup(fn func())     { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}
