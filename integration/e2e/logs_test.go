package e2e

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestLogLinesPerConnection counts the lines each agent logs at the
// default level (info) for connections that go well: none. The line that
// ends each connection is at debug (a churn of connections must not
// swamp the session lines); sessions are logged once each.
func TestLogLinesPerConnection(t *testing.T) {
	t.Parallel()
	const conns = 30
	r := harness.NewRig(t)
	backend := harness.StartHashEcho(t)
	tun := r.StartTunnel(t, backend.Addr(), harness.Options{}, harness.Options{})
	tun.Exit.WaitMessage(t, 1, 30*time.Second, "session established")
	entryBefore, exitBefore := len(tun.Entry.Logs()), len(tun.Exit.Logs())
	for i := range conns {
		if err := roundTrip(tun.Entry.Addr, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond) // the last connection's lines, if any
	entryLines, exitLines := tun.Entry.Logs()[entryBefore:], tun.Exit.Logs()[exitBefore:]
	t.Logf("%d connections: %d lines from the entry, %d from the exit, at the default level", conns, len(entryLines), len(exitLines))
	for _, c := range []struct {
		role  string
		lines []harness.Line
	}{{"entry", entryLines}, {"exit", exitLines}} {
		if len(c.lines) > 0 {
			t.Errorf("%s: %d lines for %d clean connections, want none at info; the first: %s", c.role, len(c.lines), conns, c.lines[0].Raw)
		}
	}
}

// TestStartupRaceIsWarn starts the entry before its exit: its first
// attempts are refused, which is expected while the exit comes up, so it
// says so at warn, not error, and has its session once the exit listens.
func TestStartupRaceIsWarn(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	backend := harness.StartHashEcho(t)
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(harness.FreePort(t)))
	entry := r.StartEntry(t, addr, harness.Options{})
	l := entry.WaitLine(t, 1, 30*time.Second, "a failed attempt", harness.Contains("cannot establish a session"))
	if l.String("level") != "warn" {
		t.Errorf("connection refused while the exit starts: %s, want level warn", l.Raw)
	}
	r.StartExit(t, backend.Addr(), harness.Options{Listen: addr})
	entry.WaitMessage(t, 1, 30*time.Second, "session established")
	if err := roundTrip(entry.Addr, 1); err != nil {
		t.Fatal(err)
	}
	entry.CheckNoErrors(t)
}
