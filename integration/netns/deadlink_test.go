package netns

import (
	"fmt"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// Liveness settings of the dead-link test. yamux pings every keepalive and
// gives up on a ping after its ConnectionWriteTimeout (10 s in tunnel's
// mux settings) to get it sent and as long again for the answer, so a dead
// link is noticed within keepalive + 2 x 10 s; the answer's wait alone,
// keepalive + 10 s, is what to expect when the send is not stuck.
const (
	deadKeepalive     = time.Second
	yamuxWriteTimeout = 10 * time.Second
	deadBound         = deadKeepalive + 2*yamuxWriteTimeout + 5*time.Second
)

// sessionLost matches the entry's line for a lost session.
var sessionLost = harness.Contains("session with the exit lost")

// blackhole drops every packet arriving on either end of the entry-exit
// link, as a cut cable would; unblackhole undoes it.
func blackhole(t *testing.T, n *topology) {
	t.Helper()
	for _, e := range [][2]string{{n.exit, ifExitToEntry}, {n.entry, ifEntryToExit}} {
		nft(t, e[0], fmt.Sprintf(`table inet tunneltest_blackhole {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname %q counter drop
	}
}
`, e[1]))
	}
}

func unblackhole(t *testing.T, n *topology) {
	t.Helper()
	for _, ns := range []string{n.exit, n.entry} {
		nsRun(t, ns, "nft", "delete", "table", "inet", "tunneltest_blackhole")
	}
}

// TestDeadLinkDetectedAndRecovered cuts the entry-exit link under an
// established session that cannot resume (--resume-window 0): the entry
// must notice within its keepalive bound, abort the application connection
// that was in flight, refuse new ones promptly rather than hang, and once
// the link is back reconnect so that new connections work again.
func TestDeadLinkDetectedAndRecovered(t *testing.T) {
	n := newTopology(t)
	requireTool(t, "nft", "nftables")
	a := harness.NewRig(t)
	n.startBackend(t)
	n.startExit(t, a)
	entry := n.startEntry(t, a, exitAddr, "--keepalive", deadKeepalive.String(), "--dial-timeout", "2s", "--resume-window", "0")
	if ev := n.bulk(t, 2, 1<<20, time.Minute); !ev.OK {
		t.Fatalf("before the cut: %s", ev.Err)
	}

	// A slow connection is in flight when the link dies.
	loop := startHelper(t, n.app, "loop", "-addr", entryAddr, "-workers", "0",
		"-slow-size", "4194304", "-slow-delay", "50ms", "-timeout", "2m")
	loop.send(t, "slow")
	loop.waitEvent(t, 30*time.Second, "slow connection flowing", isEvent("flowing"))

	cut := time.Now()
	blackhole(t, n)
	lost := entry.WaitLine(t, 1, deadBound, `"session with the exit lost"`, sessionLost)
	t.Logf("entry noticed the dead link %.2fs after the cut (keepalive %v; bound %v), reason given: %q",
		time.Since(cut).Seconds(), deadKeepalive, deadBound, lost.String("error"))

	slow := loop.waitEvent(t, 30*time.Second, "slow connection's end", isEvent("conn"))
	t.Logf("in-flight connection ended %.2fs after the cut (%s): %s", time.Since(cut).Seconds(), slow.Class, slow.Err)
	if slow.OK {
		t.Errorf("a connection in flight across the cut reported success")
	} else if slow.Class != "reset" {
		t.Errorf("the connection in flight across the cut ended with %q (%s), want a reset", slow.Class, slow.Err)
	}

	// While the link is dead a new connection is refused, not left hanging.
	start := time.Now()
	ev := n.bulk(t, 1, 64<<10, 30*time.Second)
	t.Logf("connection during the outage ended after %.2fs (%s): %s", time.Since(start).Seconds(), ev.Class, ev.Err)
	if ev.OK {
		t.Errorf("a connection through a dead link reported success")
	} else if ev.Class != "reset" {
		t.Errorf("a connection during the outage ended with %q (%s), want a reset", ev.Class, ev.Err)
	}

	restored := time.Now()
	unblackhole(t, n)
	entry.WaitMessage(t, 2, 60*time.Second, "session established")
	t.Logf("entry re-established its session %.2fs after the link came back", time.Since(restored).Seconds())
	ev = n.bulk(t, 4, 1<<20, time.Minute)
	if !ev.OK {
		t.Fatalf("after the link came back: %d of %d connections failed: %s", ev.Failed, ev.Conns, ev.Err)
	}
	t.Logf("after the reconnect: %d connections x 1 MiB each way intact in %.2fs", ev.Conns, ev.Seconds)
	loop.closeStdin()
	loop.waitEvent(t, 10*time.Second, "loop done", isEvent("done"))
}

// outage is how long TestDeadLinkResumed keeps the link down: longer than
// any keepalive bound, shorter than the default resumption window (60s).
const outage = 40 * time.Second

// TestDeadLinkResumed takes the entry-exit link down for 40s under a
// resumable session (the default) with a connection in flight: the entry
// notices the dead link within its keepalive bound and parks the session;
// once the link is back it resumes it within moments, and the connection
// in flight completes intact, as if the link had only paused.
func TestDeadLinkResumed(t *testing.T) {
	n := newTopology(t)
	requireTool(t, "nft", "nftables")
	a := harness.NewRig(t)
	n.startBackend(t)
	n.startExit(t, a)
	entry := n.startEntry(t, a, exitAddr, "--keepalive", deadKeepalive.String(), "--dial-timeout", "2s")
	if ev := n.bulk(t, 2, 1<<20, time.Minute); !ev.OK {
		t.Fatalf("before the cut: %s", ev.Err)
	}
	loop := startHelper(t, n.app, "loop", "-addr", entryAddr, "-workers", "0",
		"-slow-size", "4194304", "-slow-delay", "50ms", "-timeout", "3m")
	loop.send(t, "slow")
	loop.waitEvent(t, 30*time.Second, "slow connection flowing", isEvent("flowing"))

	cut := time.Now()
	blackhole(t, n)
	// A probe after a keepalive of silence, answered within two keepalives,
	// checked once a second.
	bound := 4*deadKeepalive + 3*time.Second
	entry.WaitMessage(t, 1, bound, "connection to the peer broken: the session and its streams wait for a new connection")
	t.Logf("entry noticed the dead link %.2fs after the cut", time.Since(cut).Seconds())

	time.Sleep(outage - time.Since(cut))
	restored := time.Now()
	unblackhole(t, n)
	resumed := entry.WaitMessage(t, 1, 15*time.Second, "session resumed on a new connection")
	t.Logf("entry resumed its session %.2fs after the link came back (down for %s, %v bytes sent again)",
		time.Since(restored).Seconds(), resumed.String("down_for"), resumed.Fields["resent_bytes"])

	slow := loop.waitEvent(t, 2*time.Minute, "slow connection's end", isEvent("conn"))
	if !slow.OK {
		t.Errorf("the connection in flight across a %v outage ended with %q (%s), want it intact", outage, slow.Class, slow.Err)
	}
	if ev := n.bulk(t, 4, 1<<20, time.Minute); !ev.OK {
		t.Fatalf("after the link came back: %d of %d connections failed: %s", ev.Failed, ev.Conns, ev.Err)
	}
	if got := entry.Count(harness.Contains("session established")); got != 1 {
		t.Errorf("entry made %d sessions, want its one resumed", got)
	}
	loop.closeStdin()
	loop.waitEvent(t, 10*time.Second, "loop done", isEvent("done"))
}
