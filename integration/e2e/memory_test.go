package e2e

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestEntryMemoryBehindSlowReaders measures the entry's resident memory
// in the case that holds the most of it: many connections downloading
// from a backend that sends as fast as it can, to applications that do
// not read. The entry then holds up to a flow-control window (--window,
// 1 MiB) of received data per stream, so that its memory grows with the
// streams. The Kubernetes example's memory limit and GOMEMLIMIT for the
// entry (examples/kubernetes/app.yaml) are sized from this figure: the
// test reads them there, runs the entry with that GOMEMLIMIT and fails if its peak comes
// within 10% of that memory limit.
func TestEntryMemoryBehindSlowReaders(t *testing.T) {
	if harness.RaceBuild() {
		t.Skip("skipping: the race detector's shadow memory would be measured (TUNNEL_E2E_RACE=0 measures the plain build)")
	}
	const streams = 50
	goMemLimit, limitMiB := entryMemorySettings(t)
	r := harness.NewRig(t)
	chunk := make([]byte, 64<<10)
	backend := harness.StartBackend(t, func(c net.Conn) {
		for {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	tun := r.StartTunnel(t, backend.Addr(), harness.Options{Quiet: true}, harness.Options{Quiet: true, Env: []string{"GOMEMLIMIT=" + goMemLimit}})
	base, err := harness.StatusKiB(tun.Entry.Pid(), "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for range streams {
		c := harness.Dial(t, tun.Entry.Addr, 10*time.Second)
		conns = append(conns, c)
		// Read a little, so that the stream is open end to end, then stop.
		if _, err := io.ReadFull(c, make([]byte, 1024)); err != nil {
			t.Fatal(err)
		}
	}
	// Let every window fill: the entry's memory stops growing.
	var last int64
	for i := 0; i < 30; i++ {
		time.Sleep(time.Second)
		rss, err := harness.StatusKiB(tun.Entry.Pid(), "VmRSS")
		if err != nil {
			t.Fatal(err)
		}
		if i > 5 && rss-last < 256 {
			break
		}
		last = rss
	}
	hwm, err := harness.StatusKiB(tun.Entry.Pid(), "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	exitHWM, _ := harness.StatusKiB(tun.Exit.Pid(), "VmHWM")
	t.Logf("GOMEMLIMIT=%s; entry: %d KiB resident before, %d KiB now, peak %d KiB, with %d streams behind applications that do not read (exit's peak %d KiB)",
		goMemLimit, base, last, hwm, streams, exitHWM)
	if hwm/1024 > limitMiB*9/10 {
		t.Errorf("entry's peak %d MiB (GOMEMLIMIT=%s) is within 10%% of the memory limit of %d MiB that examples/kubernetes sets: size both again", hwm/1024, goMemLimit, limitMiB)
	}
	for _, c := range conns {
		c.Close()
	}
}

// entryMemorySettings reads the entry's GOMEMLIMIT and memory limit (in
// MiB) from examples/kubernetes/app.yaml, where the entry is the first
// container.
func entryMemorySettings(t *testing.T) (goMemLimit string, limitMiB int64) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(harness.ModuleRoot(t), "examples", "kubernetes", "app.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)name: tunnel-entry\n.*?- name: GOMEMLIMIT\n\s*value: (\S+)\n.*?limits:\n(?:[ \t]*#[^\n]*\n|[ \t]*cpu: \S+\n)*\s*memory: (\d+)Mi\n`).FindSubmatch(b)
	if m == nil {
		t.Fatal("examples/kubernetes/app.yaml: no GOMEMLIMIT and memory limit (NNNMi) found for the tunnel-entry container")
	}
	limitMiB, _ = strconv.ParseInt(string(m[2]), 10, 64)
	return string(m[1]), limitMiB
}
