package realclients

import (
	"bytes"
	"crypto/rand"
	"encoding/csv"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// redis-benchmark workload: 50,000 requests of each test from 20 clients.
const (
	redisRequests = 50000
	redisClients  = 20
)

// redisTests are the redis-benchmark tests run. INCR increments the one
// key "counter:__rand_int__" and LPUSH pushes onto the one list "mylist"
// (no -r), so after each run both have grown by exactly redisRequests:
// every request reached the server once.
var redisTests = []string{"SET", "GET", "INCR", "LPUSH"}

// TestRedisBenchmark runs redis-benchmark through the tunnel and directly,
// without and with pipelining, logs the request rates side by side and
// checks after each run that every INCR and LPUSH reached the server
// exactly once. Before that, redis-cli writes a 1 MiB value through the
// tunnel that must read back the same directly, and the other way round.
func TestRedisBenchmark(t *testing.T) {
	cli := lookPath(t, "redis-cli", "redis-tools")
	bench := lookPath(t, "redis-benchmark", "redis-tools")
	rd := harness.StartRedis(t)
	tun := harness.NewRig(t).StartTunnel(t, rd, clean, clean).Entry.Addr

	redis := func(addr string, stdin []byte, args ...string) string {
		t.Helper()
		host, port, _ := net.SplitHostPort(addr)
		out, _ := run(t, nil, stdin, cli, append([]string{"-h", host, "-p", port}, args...)...)
		return strings.TrimSuffix(string(out), "\n")
	}

	// A value of 1 MiB (hex text, so that redis-cli passes it unchanged),
	// written on one side and read on the other.
	for _, c := range []struct{ name, set, get string }{
		{"through the tunnel, read directly", tun, rd},
		{"directly, read through the tunnel", rd, tun},
	} {
		raw := make([]byte, 512<<10)
		rand.Read(raw)
		value := hex.EncodeToString(raw)
		key := "big:" + value[:16]
		if got := redis(c.set, []byte(value), "-x", "set", key); got != "OK" {
			t.Fatalf("redis-cli -x set %s (%s): %q, want OK", key, c.name, got)
		}
		if got := redis(c.get, nil, "get", key); got != value {
			t.Fatalf("1 MiB value written %s: read back %d bytes that differ from the %d written",
				c.name, len(got), len(value))
		}
		if got := redis(c.get, nil, "strlen", key); got != strconv.Itoa(len(value)) {
			t.Fatalf("strlen %s (%s): %q, want %d", key, c.name, got, len(value))
		}
	}
	t.Logf("redis-cli: 1 MiB values written through the tunnel read back intact directly, and the other way round")

	// Runs, in order; the counters grow by redisRequests with each.
	type runSpec struct {
		name, addr string
		pipeline   int
	}
	runs := []runSpec{
		{"direct", rd, 1}, {"tunnel", tun, 1},
		{"direct -P 16", rd, 16}, {"tunnel -P 16", tun, 16},
	}
	results := make([]map[string]benchResult, len(runs))
	for i, r := range runs {
		host, port, _ := net.SplitHostPort(r.addr)
		out, _ := run(t, nil, nil, bench, "-h", host, "-p", port, "-n", strconv.Itoa(redisRequests),
			"-c", strconv.Itoa(redisClients), "-P", strconv.Itoa(r.pipeline),
			"-t", strings.ToLower(strings.Join(redisTests, ",")), "--csv")
		results[i] = parseBenchmark(t, r.name, out)
		want := strconv.Itoa((i + 1) * redisRequests)
		// Read through the tunnel: a check of the data path as well.
		if got := redis(tun, nil, "get", "counter:__rand_int__"); got != want {
			t.Errorf("after redis-benchmark %s: counter:__rand_int__ = %q, want %s (INCRs lost or repeated)", r.name, got, want)
		}
		if got := redis(tun, nil, "llen", "mylist"); got != want {
			t.Errorf("after redis-benchmark %s: llen mylist = %q, want %s (LPUSHes lost or repeated)", r.name, got, want)
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "redis-benchmark -n %d -c %d (requests/s, p50 latency ms; tunnel race-built: %v)\n",
		redisRequests, redisClients, harness.RaceBuild())
	fmt.Fprintf(&b, "%-6s", "")
	for _, r := range runs {
		fmt.Fprintf(&b, " %25s", r.name)
	}
	for _, test := range redisTests {
		fmt.Fprintf(&b, "\n%-6s", test)
		for i := range runs {
			res := results[i][test]
			fmt.Fprintf(&b, " %14.0f/s %6.3fms", res.rps, res.p50)
		}
	}
	t.Log(b.String())
}

// benchResult is one line of redis-benchmark --csv.
type benchResult struct {
	rps, avg, p50, p99 float64 // requests per second; latencies in ms
}

// parseBenchmark parses redis-benchmark --csv output and fails the test
// unless every test in redisTests reported a positive rate.
func parseBenchmark(t *testing.T, name string, out []byte) map[string]benchResult {
	t.Helper()
	recs, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if err != nil || len(recs) == 0 {
		t.Fatalf("redis-benchmark %s: cannot parse its CSV output (%v):\n%s", name, err, out)
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	for _, h := range []string{"test", "rps", "avg_latency_ms", "p50_latency_ms", "p99_latency_ms"} {
		if _, ok := col[h]; !ok {
			t.Fatalf("redis-benchmark %s: CSV header %q lacks column %q", name, recs[0], h)
		}
	}
	res := map[string]benchResult{}
	for _, rec := range recs[1:] {
		num := func(h string) float64 {
			v, err := strconv.ParseFloat(rec[col[h]], 64)
			if err != nil {
				t.Fatalf("redis-benchmark %s: %s in %q: %v", name, h, rec, err)
			}
			return v
		}
		res[rec[col["test"]]] = benchResult{num("rps"), num("avg_latency_ms"), num("p50_latency_ms"), num("p99_latency_ms")}
	}
	for _, test := range redisTests {
		if r, ok := res[test]; !ok || r.rps <= 0 {
			t.Fatalf("redis-benchmark %s: no positive rate for %s:\n%s", name, test, out)
		}
	}
	return res
}
