package perf

import (
	"fmt"
	"testing"
	"time"
)

// benchRTT measures 64-byte round trips from a client process to an echo
// server process, directly and through the tunnel (and the peers). With pin,
// the client, the server and every process between them run on CPU 0
// alone, so each hop costs its full share of scheduling and system calls.
func (r *rig) benchRTT(b *testing.B, pin bool) {
	echoAddr, _ := startEchoHelper(b, pin)
	routes := []route{{col: direct, addr: echoAddr}}
	place := anyCPU
	if pin {
		place = oneCPU
	}
	a := r.startAgents(b, echoAddr, place, false)
	routes = append(routes, route{tunnel, a.Entry.Addr, a.pids()})
	routes = append(routes, r.peerRoutes(b, echoAddr, place)...)
	name := "unpinned"
	if pin {
		name = "pinned"
	}
	for _, p := range routes {
		if pin {
			checkPinned(b, p.pids...)
		}
		p50, p99 := runRTTHelper(b, pin, p.addr, r.set.rttCount)
		for _, q := range []struct {
			name string
			d    time.Duration
		}{{"p50", p50}, {"p99", p99}} {
			us := float64(q.d.Nanoseconds()) / 1e3
			b.ReportMetric(us, fmt.Sprintf("%s-%s-us", p.col, q.name))
			r.res.set(fmt.Sprintf("rtt-%s-%s", name, q.name), p.col, us)
		}
	}
	b.ReportMetric(0, "ns/op")
}
