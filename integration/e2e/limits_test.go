package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestOpenFileLimitWarning starts an exit and an entry under prlimit. With
// a hard open-file limit of 1024 each logs one warning naming the limit.
// With a soft limit of 1024 under a high hard limit neither warns, because
// the Go runtime raised the soft limit to (one short of) the hard one, as
// /proc/PID/limits shows.
func TestOpenFileLimitWarning(t *testing.T) {
	t.Parallel()
	prlimit, err := exec.LookPath("prlimit")
	harness.RequireOrSkip(t, "prlimit (Debian package util-linux)", err == nil)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	high := min(lim.Max, 65536) // lowering a hard limit needs no privilege
	harness.RequireOrSkip(t, fmt.Sprintf("a hard open-file limit of at least 16384 (it is %d: raise it with ulimit -Hn)", lim.Max),
		high >= 16384)
	r := harness.NewRig(t)
	lowWarning := func(l harness.Line) bool {
		return l.String("level") == "warn" && strings.HasPrefix(l.Message(), "the open-file limit is low")
	}

	for _, tc := range []struct {
		nofile string
		warn   bool
	}{
		{"1024:1024", true},
		{fmt.Sprintf("1024:%d", high), false},
	} {
		t.Run(tc.nofile, func(t *testing.T) {
			o := harness.Options{Prefix: []string{prlimit, "--nofile=" + tc.nofile}}
			tun := r.StartTunnel(t, "127.0.0.1:9", o, o)
			for _, p := range []*harness.Agent{tun.Exit, tun.Entry} {
				warnings := 0
				for _, l := range p.Logs() {
					if !lowWarning(l) {
						continue
					}
					warnings++
					if n, _ := l.Fields["open_files_limit"].(float64); n != 1024 {
						t.Errorf("the warning gives open_files_limit %v, want 1024: %s", l.Fields["open_files_limit"], l.Raw)
					}
				}
				if want := map[bool]int{true: 1, false: 0}[tc.warn]; warnings != want {
					t.Errorf("pid %d under --nofile=%s logged %d low-limit warnings, want %d:\n%s",
						p.Pid(), tc.nofile, warnings, want, p.LogText())
				}
				if !tc.warn {
					limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", p.Pid()))
					if err != nil {
						t.Fatal(err)
					}
					for _, line := range strings.Split(string(limits), "\n") {
						if strings.HasPrefix(line, "Max open files") {
							t.Logf("pid %d under --nofile=%s: %s", p.Pid(), tc.nofile, line)
						}
					}
				}
			}
		})
	}
}
