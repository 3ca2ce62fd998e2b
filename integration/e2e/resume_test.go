package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// cutter is a TCP relay between the entry and the exit that can reset
// every connection it carries at once, as a NAT or a load balancer that
// loses its state does.
type cutter struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[*net.TCPConn]bool
	cuts   atomic.Int64
	// off makes the relay accept and close at once, so that every attempt
	// fails at once, as to a blackhole without the wait.
	off atomic.Bool
}

func startCutter(t *testing.T, target string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln, target: target, conns: map[*net.TCPConn]bool{}}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); c.cut(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			if c.off.Load() {
				down.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				down.Close()
				continue
			}
			c.mu.Lock()
			c.conns[down.(*net.TCPConn)], c.conns[up.(*net.TCPConn)] = true, true
			c.mu.Unlock()
			wg.Add(2)
			for _, p := range [][2]net.Conn{{up, down}, {down, up}} {
				go func() {
					defer wg.Done()
					io.Copy(p[0], p[1])
					p[0].Close()
					p[1].Close()
				}()
			}
		}
	}()
	return c
}

// cut resets every connection the relay carries, both ways.
func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for tc := range c.conns {
		tc.SetLinger(0)
		tc.Close()
	}
	c.conns = map[*net.TCPConn]bool{}
	c.cuts.Add(1)
}

// cutEvery resets the relay's connections every d until stop is closed.
func (c *cutter) cutEvery(d time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			c.cut()
		}
	}
}

// resumeRig is an exit, a cutter and an entry that dials the exit through
// it, with the given backend.
func resumeRig(t *testing.T, backend string, entryArgs ...string) (*harness.Agent, *harness.Agent, *cutter) {
	t.Helper()
	r := harness.NewRig(t)
	exit := r.StartExit(t, backend, harness.Options{Status: true})
	relay := startCutter(t, exit.Addr)
	entry := r.StartEntry(t, relay.ln.Addr().String(), harness.Options{Status: true, Args: entryArgs})
	entry.WaitMessage(t, 1, 30*time.Second, "session established")
	return entry, exit, relay
}

// TestResumeBulkAcrossResets: 8 connections echoing 16 MiB each while the
// link between entry and exit is reset 300ms after each resumption (so
// that data moves between resets however fast the machine): every byte
// comes back (SHA-256 of both directions), on the one session.
func TestResumeBulkAcrossResets(t *testing.T) {
	t.Parallel()
	backend := harness.StartHashEcho(t)
	entry, exit, relay := resumeRig(t, backend.Addr())
	stop := make(chan struct{})
	go func() {
		resumed := harness.Contains("session resumed on a new connection")
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			relay.cut()
			for entry.Count(resumed) <= n {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := harness.Exchange(entry.Addr, 16<<20, uint64(i), 3*time.Minute); err != nil {
				errs <- fmt.Errorf("connection %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	cuts := relay.cuts.Load()
	resumed := entry.Count(harness.Contains("session resumed on a new connection"))
	t.Logf("8 x 16 MiB echoed across %d resets; the entry resumed %d times", cuts, resumed)
	if resumed == 0 {
		t.Error("no resumption logged")
	}
	if got := entry.Count(harness.Contains("session established")); got != 1 {
		t.Errorf("entry made %d sessions, want its one resumed", got)
	}
	checkResumeMetrics(t, entry)
	checkResumeMetrics(t, exit)
}

// checkResumeMetrics checks that an agent's /metrics counts resumptions
// and resent bytes, and, within 20s (the last reset may have just come),
// no parked session.
func checkResumeMetrics(t *testing.T, a *harness.Agent) {
	t.Helper()
	var body []byte
	parked0 := regexp.MustCompile(`(?m)^tunnel_sessions_parked 0$`)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var err error
		if body, err = a.Get("/metrics"); err != nil {
			t.Fatal(err)
		}
		if parked0.Match(body) || time.Now().After(deadline) {
			break
		}
	}
	m := regexp.MustCompile(`(?m)^tunnel_session_resumptions_total\{result="resumed"\} (\d+)$`).FindSubmatch(body)
	if m == nil || string(m[1]) == "0" {
		t.Errorf("%s: /metrics counts no resumption:\n%s", a.Role, grepLines(body, "resum"))
	}
	if !regexp.MustCompile(`(?m)^tunnel_resent_bytes_total [\d.e+]+$`).Match(body) {
		t.Errorf("%s: /metrics has no tunnel_resent_bytes_total", a.Role)
	}
	if !parked0.Match(body) {
		t.Errorf("%s: /metrics shows parked sessions 20s after the link is back:\n%s", a.Role, grepLines(body, "parked"))
	}
}

func grepLines(body []byte, s string) string {
	var out []string
	for _, l := range strings.Split(string(body), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestResumePgbench: pgbench -S and -N through the tunnel while the link
// is reset every second: no transaction fails and no client aborts.
func TestResumePgbench(t *testing.T) {
	t.Parallel()
	pgbench, err := exec.LookPath("pgbench")
	harness.RequireOrSkip(t, "pgbench (Debian package postgresql-contrib or postgresql)", err == nil)
	pg := harness.StartPostgres(t)
	entry, _, relay := resumeRig(t, pg)
	host, port, _ := net.SplitHostPort(entry.Addr)
	env := append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=postgres",
		"PGDATABASE=postgres", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30", "PGOPTIONS=", "PGPASSWORD=")
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(pgbench, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("-i", "-s", "1", "-q")
	for _, mode := range []string{"-S", "-N"} {
		stop := make(chan struct{})
		before := relay.cuts.Load()
		go relay.cutEvery(time.Second, stop)
		out := run(mode, "-c", "8", "-j", "2", "-T", "6", "-n")
		close(stop)
		cuts := relay.cuts.Load() - before
		if m := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(out); m == nil || m[1] != "0" {
			t.Errorf("pgbench %s across %d resets: failed transactions:\n%s", mode, cuts, out)
		}
		if strings.Contains(out, "aborted") {
			t.Errorf("pgbench %s across %d resets: a client aborted:\n%s", mode, cuts, out)
		}
		tps := regexp.MustCompile(`tps = ([\d.]+)`).FindStringSubmatch(out)
		t.Logf("pgbench %s through the tunnel across %d resets: %v tps", mode, cuts, tps)
		if cuts == 0 {
			t.Errorf("pgbench %s ran without a reset", mode)
		}
	}
}

// TestResumeWindowOver: a link down longer than the window ends the
// session: the connection it carried is reset, the entry logs why once,
// and a new session carries new connections when the link is back.
func TestResumeWindowOver(t *testing.T) {
	t.Parallel()
	backend := harness.StartHashEcho(t)
	r := harness.NewRig(t)
	exit := r.StartExit(t, backend.Addr(), harness.Options{Args: []string{"--resume-window", "2s"}})
	relay := startCutter(t, exit.Addr)
	entry := r.StartEntry(t, relay.ln.Addr().String(), harness.Options{})
	entry.WaitMessage(t, 1, 30*time.Second, "session established")

	c := harness.Dial(t, entry.Addr, time.Minute)
	if err := harness.EchoBack(c, []byte("before")); err != nil {
		t.Fatal(err)
	}
	relay.off.Store(true)
	relay.cut()
	exit.WaitMessage(t, 1, 20*time.Second, "resumption window over: the session ends, and its streams are reset")
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("the connection across an outage longer than the window: %v, want it reset", err)
	}
	relay.off.Store(false)
	entry.WaitMessage(t, 2, 30*time.Second, "session established")
	if err := harness.Exchange(entry.Addr, 1<<20, 7, time.Minute); err != nil {
		t.Errorf("a new connection on the new session: %v", err)
	}
}
