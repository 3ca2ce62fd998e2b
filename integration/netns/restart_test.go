package netns

import (
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestExitRestartMidRun kills the exit (SIGKILL) while an app keeps opening
// connections through the tunnel, then starts a new exit on the same
// address. The entry must notice, reconnect, and carry later connections
// intact. Every connection must end either intact (checked by SHA-256) or
// with an abort (reset): a connection in flight at the kill must fail, and
// none may end cleanly with data missing.
func TestExitRestartMidRun(t *testing.T) {
	n := newTopology(t)
	a := harness.NewRig(t)
	n.startBackend(t)
	exit1 := n.startExit(t, a)
	entry := n.startEntry(t, a, exitAddr, "--keepalive", "1s")

	loop := startHelper(t, n.app, "loop", "-addr", entryAddr, "-workers", "3", "-size", "524288",
		"-slow-size", "4194304", "-slow-delay", "50ms", "-timeout", "2m")
	okConn := func(ev event) bool { return ev.Event == "conn" && ev.OK }
	loop.waitEvents(t, 10, 30*time.Second, "10 intact connections before the kill", okConn)
	loop.send(t, "slow")
	slowID := loop.waitEvent(t, 30*time.Second, "slow connection flowing", isEvent("flowing")).ID

	killed := time.Now()
	if err := exit1.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("killing the exit: %v", err)
	}
	if code := exit1.Wait(10 * time.Second); code == -2 {
		t.Fatal("exit still running 10s after SIGKILL")
	}
	lost := entry.WaitLine(t, 1, 30*time.Second, `"session with the exit lost"`, sessionLost)
	t.Logf("entry noticed the killed exit after %.3fs, reason given: %q", time.Since(killed).Seconds(), lost.String("error"))

	time.Sleep(time.Second) // the app keeps trying while there is no exit
	n.startExit(t, a)
	restarted := time.Now()
	entry.WaitMessage(t, 2, 60*time.Second, "session established")
	up := time.Now()
	t.Logf("entry re-established its session %.2fs after the new exit listened (%.2fs after the kill)",
		up.Sub(restarted).Seconds(), up.Sub(killed).Seconds())

	afterUp := func(ev event) bool { return okConn(ev) && ev.Start > up.UnixNano() }
	loop.waitEvents(t, 10, 60*time.Second, "10 intact connections after the reconnect", afterUp)
	loop.closeStdin()
	loop.waitEvent(t, 2*time.Minute, "loop done", isEvent("done"))

	var ok, failed, spanning, spanningOK int
	var slow *event
	for _, ev := range loop.Events() {
		if ev.Event != "conn" {
			continue
		}
		if ev.ID == slowID {
			slow = &ev
		}
		if ev.OK {
			ok++
		} else {
			failed++
			if ev.Class != "reset" {
				t.Errorf("connection %d (started %.3fs after the kill) ended with %q, want intact or reset: %s",
					ev.ID, time.Duration(ev.Start-killed.UnixNano()).Seconds(), ev.Class, ev.Err)
			}
		}
		if ev.Start < killed.UnixNano() && ev.End > killed.UnixNano() {
			spanning++
			if ev.OK {
				spanningOK++
			}
		}
	}
	t.Logf("%d connections intact, %d aborted; %d were open at the kill, %d of them intact (done before the exit died)",
		ok, failed, spanning, spanningOK)
	switch {
	case slow == nil:
		t.Errorf("no result for the slow connection %d", slowID)
	case slow.OK:
		t.Errorf("the slow connection, in flight across the kill, reported success")
	default:
		t.Logf("slow connection in flight at the kill (%s): %s", slow.Class, slow.Err)
	}
	if n := entry.Count(harness.MessageIs("session established")); n != 2 {
		t.Errorf("entry established %d sessions, want 2 (one per exit)", n)
	}
}
