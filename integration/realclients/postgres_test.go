package realclients

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// pgbench workload: scale 2 (200,000 accounts), 8 clients on 2 threads,
// 500 transactions each.
const (
	pgScale   = 2
	pgClients = 8
	pgThreads = 2
	pgTxns    = 500
)

// TestPgbench initialises a pgbench database through the tunnel, runs the
// same TPC-B-like workload through the tunnel and directly, and logs both
// results side by side. Both runs must process every transaction without a
// failure. The data must then read the same through the tunnel as directly:
// the TPC-B balance invariant, the row counts and a 20 MB COPY of every
// account, byte for byte.
func TestPgbench(t *testing.T) {
	psql := lookPath(t, "psql", "postgresql-client")
	pgbench := lookPath(t, "pgbench", "postgresql (pgbench ships with the server, postgresql-15)")
	pg := harness.StartPostgres(t)
	tun := harness.NewRig(t).StartTunnel(t, pg, clean, clean).Entry.Addr
	direct, tunnel := pgEnv(pg), pgEnv(tun)

	_, progress := run(t, tunnel, nil, pgbench, "-i", "-s", strconv.Itoa(pgScale), "-q")
	t.Logf("pgbench -i -s %d through the tunnel: %s", pgScale, lastLine(progress))

	// -n: no vacuum before a run, which would also empty pgbench_history,
	// whose rows the invariant check below counts over both runs.
	args := []string{"-n", "-c", strconv.Itoa(pgClients), "-j", strconv.Itoa(pgThreads), "-t", strconv.Itoa(pgTxns)}
	viaTunnel := parsePgbench(t, "through the tunnel", outOnly(run(t, tunnel, nil, pgbench, args...)))
	viaDirect := parsePgbench(t, "directly", outOnly(run(t, direct, nil, pgbench, args...)))
	t.Logf("pgbench %s (scale %d, %d transactions per run; tunnel race-built: %v)\n"+
		"%-26s %12s %12s\n"+
		"%-26s %12.1f %12.1f\n"+
		"%-26s %12.3f %12.3f\n"+
		"%-26s %12.3f %12.3f\n"+
		"%-26s %12d %12d\n"+
		"%-26s %12d %12d",
		strings.Join(args, " "), pgScale, pgClients*pgTxns, harness.RaceBuild(),
		"", "direct", "tunnel",
		"tps", viaDirect.tps, viaTunnel.tps,
		"latency average (ms)", viaDirect.latency, viaTunnel.latency,
		"initial connection (ms)", viaDirect.connect, viaTunnel.connect,
		"transactions processed", viaDirect.processed, viaTunnel.processed,
		"transactions failed", viaDirect.failed, viaTunnel.failed)

	// TPC-B invariant: every transaction adds the same delta to one
	// account, teller and branch and records it in the history, so the four
	// sums agree; the history holds one row per transaction of both runs.
	const query = "select (select sum(abalance) from pgbench_accounts), (select sum(tbalance) from pgbench_tellers)," +
		" (select sum(bbalance) from pgbench_branches), (select sum(delta) from pgbench_history)," +
		" (select count(*) from pgbench_history), (select count(*) from pgbench_accounts)"
	psqlArgs := []string{"-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", query}
	got := strings.TrimSpace(string(outOnly(run(t, tunnel, nil, psql, psqlArgs...))))
	want := strings.TrimSpace(string(outOnly(run(t, direct, nil, psql, psqlArgs...))))
	if got != want {
		t.Errorf("balance query through the tunnel: %q; directly: %q", got, want)
	}
	f := strings.Split(got, "|")
	if len(f) != 6 || f[0] != f[1] || f[1] != f[2] || f[2] != f[3] ||
		f[4] != strconv.Itoa(2*pgClients*pgTxns) || f[5] != strconv.Itoa(pgScale*100000) {
		t.Errorf("balance query through the tunnel: %q; want four equal sums, %d history rows, %d accounts",
			got, 2*pgClients*pgTxns, pgScale*100000)
	} else {
		t.Logf("TPC-B invariant holds through the tunnel: balances sum to %s; %s history rows, %s accounts", f[0], f[4], f[5])
	}

	// Every account, about 20 MB of COPY output, byte for byte.
	copyArgs := []string{"-X", "-v", "ON_ERROR_STOP=1", "-c",
		"copy (select aid, bid, abalance, filler from pgbench_accounts order by aid) to stdout"}
	gotCopy, _ := run(t, tunnel, nil, psql, copyArgs...)
	wantCopy, _ := run(t, direct, nil, psql, copyArgs...)
	if rows := bytes.Count(wantCopy, []byte("\n")); rows != pgScale*100000 {
		t.Errorf("COPY of the accounts directly: %d rows, want %d", rows, pgScale*100000)
	}
	if sha256.Sum256(gotCopy) != sha256.Sum256(wantCopy) {
		t.Errorf("COPY of the accounts through the tunnel (%d bytes) differs from the COPY directly (%d bytes)",
			len(gotCopy), len(wantCopy))
	} else {
		t.Logf("COPY of %d accounts: %d bytes, identical through the tunnel and directly (SHA-256 %x)",
			pgScale*100000, len(gotCopy), sha256.Sum256(gotCopy))
	}
}

// pgEnv is the libpq environment for the server at addr: user postgres,
// database postgres, no TLS (the tunnel is the encryption under test).
func pgEnv(addr string) []string {
	host, port, _ := net.SplitHostPort(addr)
	return []string{"PGHOST=" + host, "PGPORT=" + port, "PGUSER=postgres", "PGDATABASE=postgres",
		"PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30", "PGPASSWORD=", "PGOPTIONS="}
}

// pgbenchResult is what a pgbench run reports.
type pgbenchResult struct {
	processed, wanted, failed int
	tps                       float64 // without initial connection time
	latency, connect          float64 // ms: average latency, initial connection time
}

var (
	pgProcessedRE = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)/(\d+)$`)
	pgFailedRE    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	pgLatencyRE   = regexp.MustCompile(`(?m)^latency average = ([\d.]+) ms$`)
	pgConnectRE   = regexp.MustCompile(`(?m)^initial connection time = ([\d.]+) ms$`)
	pgTPSRE       = regexp.MustCompile(`(?m)^tps = ([\d.]+) \(without initial connection time\)$`)
)

// parsePgbench parses pgbench's summary and fails the test unless every
// transaction was processed and none failed.
func parsePgbench(t *testing.T, how string, out []byte) pgbenchResult {
	t.Helper()
	s := string(out)
	var r pgbenchResult
	var err error
	num := func(re *regexp.Regexp, group int) float64 {
		m := re.FindStringSubmatch(s)
		if m == nil {
			err = fmt.Errorf("no match for %s", re)
			return 0
		}
		v, perr := strconv.ParseFloat(m[group], 64)
		if perr != nil {
			err = perr
		}
		return v
	}
	r.processed = int(num(pgProcessedRE, 1))
	r.wanted = int(num(pgProcessedRE, 2))
	r.latency = num(pgLatencyRE, 1)
	r.connect = num(pgConnectRE, 1)
	r.tps = num(pgTPSRE, 1)
	if err != nil {
		t.Fatalf("pgbench %s: cannot parse its summary (%v):\n%s", how, err, s)
	}
	// pgbench 15 prints the failed count; older versions abort on any error.
	if pgFailedRE.MatchString(s) {
		r.failed = int(num(pgFailedRE, 1))
	}
	if r.wanted != pgClients*pgTxns || r.processed != r.wanted || r.failed != 0 {
		t.Fatalf("pgbench %s: processed %d/%d transactions (want %d), %d failed:\n%s",
			how, r.processed, r.wanted, pgClients*pgTxns, r.failed, s)
	}
	return r
}

// lastLine returns the last non-empty line of out.
func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
