package perf

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// pgbench workload: a small database, 8 clients on 2 threads.
const (
	pgScale   = 2
	pgClients = 8
	pgThreads = 2
)

// benchPgbench runs pgbench against a throwaway PostgreSQL, directly and
// through the tunnel and the peers, in three modes, each a sub-benchmark.
func (r *rig) benchPgbench(b *testing.B) {
	pgbench, err := exec.LookPath("pgbench")
	harness.RequireOrSkip(b, "pgbench (Debian package postgresql, which brings postgresql-15 and postgresql-client)", err == nil)
	pg := harness.StartPostgres(b)
	a := r.startAgents(b, pg, anyCPU, false)
	routes := append([]route{{col: direct, addr: pg}, {col: tunnel, addr: a.Entry.Addr}}, r.peerRoutes(b, pg, anyCPU)...)
	runPgbench(b, pgbench, pg, "-i", "-q", "-s", strconv.Itoa(pgScale))
	for _, m := range []struct {
		name, key string
		args      []string
	}{
		{"select", "pgbench-S", []string{"-S"}},
		{"update", "pgbench-N", []string{"-N"}},
		{"connect", "pgbench-SC", []string{"-S", "-C"}},
	} {
		b.Run(m.name, func(b *testing.B) {
			for _, p := range routes {
				args := append([]string{"-c", strconv.Itoa(pgClients), "-j", strconv.Itoa(pgThreads),
					"-T", strconv.Itoa(int(r.set.pgbenchDuration.Seconds()))}, m.args...)
				tps := pgbenchTPS(b, runPgbench(b, pgbench, p.addr, args...))
				b.ReportMetric(tps, p.col.String()+"-tps")
				r.res.set(m.key, p.col, tps)
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// runPgbench runs pgbench with args against the server at addr and returns
// its standard output; it fails the benchmark when pgbench fails.
func runPgbench(b *testing.B, pgbench, addr string, args ...string) string {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.CommandContext(ctx, pgbench, args...)
	cmd.Env = append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=postgres", "PGDATABASE=postgres",
		"PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30", "PGPASSWORD=", "PGOPTIONS=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("pgbench %s against %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), addr, err,
			stdout.String(), clip(stderr.String()))
	}
	return stdout.String()
}

var (
	pgProcessedRE = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	pgFailedRE    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	// With -C the connections count: "(including reconnection times)".
	pgTPSRE = regexp.MustCompile(`(?m)^tps = ([\d.]+) \((without initial connection time|including reconnection times)\)$`)
)

// pgbenchTPS returns the transactions per second of a pgbench run's report,
// failing the benchmark unless transactions were processed and none failed.
func pgbenchTPS(b *testing.B, out string) float64 {
	b.Helper()
	processed := pgProcessedRE.FindStringSubmatch(out)
	failed := pgFailedRE.FindStringSubmatch(out)
	tps := pgTPSRE.FindStringSubmatch(out)
	if processed == nil || tps == nil || processed[1] == "0" || (failed != nil && failed[1] != "0") {
		b.Fatalf("pgbench did not process its transactions cleanly:\n%s", out)
	}
	v, err := strconv.ParseFloat(tps[1], 64)
	if err != nil {
		b.Fatalf("pgbench tps %q: %v", tps[1], err)
	}
	return v
}

// clip keeps the end of a long command output for a failure message.
func clip(s string) string {
	const keep = 8 << 10
	if len(s) > keep {
		return "...\n" + s[len(s)-keep:]
	}
	return s
}
