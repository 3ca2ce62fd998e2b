package netns

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// Bulk load of each fault case: bulkConns connections at once, each
// sending bulkSize bytes and getting them back, checked by SHA-256.
const (
	bulkConns   = 4
	bulkSize    = 3 << 20
	bulkTimeout = 3 * time.Minute
)

// fault is one way to damage the entry-exit link. setup runs before the
// agents start and returns the address the entry must dial; check runs
// after the transfer and fails the test if the fault did not act on it.
type fault struct {
	name  string
	tools [][2]string // command, Debian package
	setup func(t *testing.T, n *topology) (peer string)
	check func(t *testing.T, n *topology, carried int64)
}

// TestFaultyLink runs concurrent bulk transfers through the tunnel over an
// entry-exit link that is slow, lossy or delayed. Every byte must arrive
// intact both ways; the throughput seen is logged.
func TestFaultyLink(t *testing.T) {
	requireNetns(t)
	a := harness.NewRig(t)
	for _, f := range []fault{tbfFault(), lossFault(), delayFault()} {
		t.Run(f.name, func(t *testing.T) {
			for _, tool := range f.tools {
				requireTool(t, tool[0], tool[1])
			}
			n := newTopology(t)
			n.startBackend(t)
			peer := f.setup(t, n)
			n.startExit(t, a)
			n.startEntry(t, a, peer)
			ev := n.bulk(t, bulkConns, bulkSize, bulkTimeout)
			if !ev.OK {
				t.Fatalf("%d of %d connections failed (first failure: %s): %s", ev.Failed, ev.Conns, ev.Class, ev.Err)
			}
			t.Logf("%s: %d connections x %d MiB each way, all intact, in %.2fs: %.1f Mbit/s each way",
				f.name, ev.Conns, bulkSize>>20, ev.Seconds, mbits(ev.Bytes, ev.Seconds))
			f.check(t, n, ev.Bytes)
		})
	}
}

var tcStatsRE = regexp.MustCompile(`Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)`)

// tbfFault shapes both directions of the entry-exit link to 20 Mbit/s with
// a token bucket filter on each end's egress.
func tbfFault() fault {
	ends := func(n *topology) [][2]string {
		return [][2]string{{n.entry, ifEntryToExit}, {n.exit, ifExitToEntry}}
	}
	return fault{
		name:  "tbf-20mbit",
		tools: [][2]string{{"tc", "iproute2"}},
		setup: func(t *testing.T, n *topology) string {
			for _, e := range ends(n) {
				nsRun(t, e[0], "tc", "qdisc", "add", "dev", e[1], "root", "tbf",
					"rate", "20mbit", "burst", "32kbit", "latency", "400ms")
			}
			return exitAddr
		},
		check: func(t *testing.T, n *topology, carried int64) {
			for _, e := range ends(n) {
				out := nsRun(t, e[0], "tc", "-s", "qdisc", "show", "dev", e[1])
				m := tcStatsRE.FindStringSubmatch(out)
				if m == nil {
					t.Fatalf("no tbf statistics for %s in %s:\n%s", e[1], e[0], out)
				}
				sent, _ := strconv.ParseInt(m[1], 10, 64)
				over, _ := strconv.ParseInt(m[4], 10, 64)
				t.Logf("tbf on %s: sent %d bytes in %s packets, dropped %s, overlimits %d", e[1], sent, m[2], m[3], over)
				if sent < carried {
					t.Errorf("tbf on %s sent %d bytes, less than the %d carried: the traffic did not go through it", e[1], sent, carried)
				}
				if over == 0 {
					t.Errorf("tbf on %s never held a packet back: the link was not shaped", e[1])
				}
			}
		},
	}
}

// lossFault drops about 2% of the packets on the entry-exit link, each way.
// The drop happens on input at the receiving end (in the exit namespace for
// what the entry sends, in the entry namespace for what the exit sends): a
// packet dropped there is lost exactly as on a wire, whereas a drop on
// output is reported to the sending socket as a local error.
func lossFault() fault {
	ends := func(n *topology) [][2]string {
		return [][2]string{{n.exit, ifExitToEntry}, {n.entry, ifEntryToExit}}
	}
	return fault{
		name:  "nft-2pct-loss",
		tools: [][2]string{{"nft", "nftables"}},
		setup: func(t *testing.T, n *topology) string {
			for _, e := range ends(n) {
				nft(t, e[0], fmt.Sprintf(`table inet tunneltest_loss {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname %q counter
		iifname %q numgen random mod 100 < 2 counter drop
	}
}
`, e[1], e[1]))
			}
			return exitAddr
		},
		check: func(t *testing.T, n *topology, carried int64) {
			for _, e := range ends(n) {
				c := nftCounters(t, e[0], "tunneltest_loss")
				if len(c) != 2 {
					t.Fatalf("nft counters in %s: %v, want 2", e[0], c)
				}
				t.Logf("loss on input of %s in %s: dropped %d of %d packets (%.2f%%)",
					e[1], e[0], c[1], c[0], 100*float64(c[1])/float64(max(c[0], 1)))
				if c[1] == 0 {
					t.Errorf("nothing was dropped on input of %s in %s: the link was not lossy", e[1], e[0])
				}
			}
		},
	}
}

// delayFault puts a relay in the exit namespace between the entry and the
// exit that holds every chunk for 20 to 50 ms, each way (see helperRelay:
// it delays, it cannot reorder TCP segments).
func delayFault() fault {
	var relay *helperProc
	return fault{
		name: "relay-delay-20-50ms",
		setup: func(t *testing.T, n *topology) string {
			relay = startHelper(t, n.exit, "relay", "-listen", relayAddr, "-target", exitAddr,
				"-min", "20ms", "-max", "50ms")
			relay.waitEvent(t, 30*time.Second, "relay listening", isEvent("listening"))
			return relayAddr
		},
		check: func(t *testing.T, n *topology, carried int64) {
			relay.send(t, "stats")
			st := relay.waitEvent(t, 10*time.Second, "relay stats", isEvent("stats"))
			t.Logf("relay: %d connection(s), %d bytes in %d chunks, each held %.1f ms on average",
				st.Conns, st.Bytes, st.Chunks, st.Seconds*1000)
			if st.Bytes < 2*carried {
				t.Errorf("relay carried %d bytes, less than the %d the transfer moved both ways: the tunnel bypassed it",
					st.Bytes, 2*carried)
			}
			if st.Seconds < 0.020 {
				t.Errorf("relay held chunks %.1f ms on average, less than its minimum 20 ms", st.Seconds*1000)
			}
		},
	}
}
