package e2e

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestPostgres puts a real PostgreSQL server behind the exit and drives it
// through the entry with psql (a COPY of a few MiB in, a query whose
// checksum comes back) and pgbench (initialisation, then several clients
// running a few hundred transactions).
func TestPostgres(t *testing.T) {
	t.Parallel()
	psql, err := exec.LookPath("psql")
	harness.RequireOrSkip(t, "psql (Debian package postgresql-client)", err == nil)
	pgbench, err := exec.LookPath("pgbench")
	harness.RequireOrSkip(t, "pgbench (Debian package postgresql-contrib or postgresql)", err == nil)
	r := harness.NewRig(t)
	pg := harness.StartPostgres(t)
	tun := r.StartTunnel(t, pg, harness.Options{}, harness.Options{})
	host, port, _ := net.SplitHostPort(tun.Entry.Addr)

	pgEnv := append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=postgres",
		"PGDATABASE=postgres", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30", "PGOPTIONS=", "PGPASSWORD=")
	run := func(stdin string, name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = pgEnv
		cmd.Stdin = strings.NewReader(stdin)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		t.Logf("%s %s: %v", name, strings.Join(args[:min(len(args), 3)], " "), time.Since(start).Round(time.Millisecond))
		return string(out)
	}

	// COPY 100000 rows (about 5 MiB) in; read back their MD5 computed by
	// the server.
	const rows = 100000
	var copyIn, want strings.Builder
	copyIn.WriteString("create table t (i int primary key, s text);\ncopy t from stdin;\n")
	for i := 1; i <= rows; i++ {
		s := fmt.Sprintf("row %d %x", i, md5.Sum([]byte(fmt.Sprint(i))))
		fmt.Fprintf(&copyIn, "%d\t%s\n", i, s)
		if i > 1 {
			want.WriteByte('|')
		}
		want.WriteString(s)
	}
	copyIn.WriteString("\\.\n")
	run(copyIn.String(), psql, "-X", "-v", "ON_ERROR_STOP=1", "-q")
	sum := md5.Sum([]byte(want.String()))
	out := run("", psql, "-X", "-v", "ON_ERROR_STOP=1", "-At", "-c",
		"select count(*), md5(string_agg(s, '|' order by i)) from t")
	if got, want := strings.TrimSpace(out), fmt.Sprintf("%d|%s", rows, hex.EncodeToString(sum[:])); got != want {
		t.Fatalf("psql through the tunnel: got %q, want %q", got, want)
	}

	// pgbench: initialise (COPY of 100000 accounts), then 8 clients x 50
	// transactions.
	run("", pgbench, "-i", "-s", "1", "-q")
	out = run("", pgbench, "-c", "8", "-j", "2", "-t", "50", "-n")
	if !regexp.MustCompile(`number of transactions actually processed: 400/400`).MatchString(out) {
		t.Fatalf("pgbench did not process 400/400 transactions:\n%s", out)
	}
	if m := regexp.MustCompile(`number of failed transactions: (\d+)`).FindStringSubmatch(out); m != nil && m[1] != "0" {
		t.Fatalf("pgbench: %s failed transactions:\n%s", m[1], out)
	}
	tun.CheckNoErrors(t)
	if m := regexp.MustCompile(`tps = ([\d.]+)`).FindStringSubmatch(out); m != nil {
		t.Logf("pgbench through the tunnel: %s tps (8 clients, race-built binary: %v)", m[1], harness.RaceBuild())
	}
}
