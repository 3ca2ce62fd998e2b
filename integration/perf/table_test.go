package perf

import (
	"fmt"
	"io"
	"strings"
)

// A column of the table: where a figure was measured.
type column int

const (
	direct  column = iota // application straight to the server
	tunnel                // through an entry and an exit
	stunnel               // the peers, when installed: a stunnel4 client and server,
	spiped                // a spiped pair,
	sshL                  // ssh -L through sshd
	columns
)

// String names the column in metrics and in TUNNEL_PERF_PEERS.
func (c column) String() string {
	return [columns]string{"direct", "tunnel", "stunnel", "spiped", "ssh"}[c]
}

// heading names the column in the table.
func (c column) heading() string {
	if c == sshL {
		return "ssh -L"
	}
	return c.String()
}

// route is one way from a client to a server: directly, or through a pair
// of processes (pids) whose CPU time counts.
type route struct {
	col  column
	addr string
	pids []int
}

// row is one line of the table; its figures are stored under key.
type row struct {
	key, label string
	decimals   int
}

// rows lists the table's lines in order; a line nothing was measured for
// is left out.
var rows = []row{
	{"bulk-up", "bulk, 1 connection, up, MB/s", 0},
	{"bulk-down", "bulk, 1 connection, down, MB/s", 0},
	{"bulk-cpu", "CPU seconds per GB, both tunnel processes", 2},
	{"bulk-split-up", "bulk, entry on CPU 0 and exit on CPU 1, up, MB/s", 0},
	{"bulk-split-down", "bulk, entry on CPU 0 and exit on CPU 1, down, MB/s", 0},
	{"bulk-split-cpu", "same, CPU seconds per GB, both tunnel processes", 2},
	{"rtt-pinned-p50", "64-byte round trip, all on one CPU, p50 µs", 1},
	{"rtt-pinned-p99", "64-byte round trip, all on one CPU, p99 µs", 1},
	{"rtt-unpinned-p50", "64-byte round trip, unpinned, p50 µs", 1},
	{"rtt-unpinned-p99", "64-byte round trip, unpinned, p99 µs", 1},
	{"connrate", "connect + echo 64 B + close, 8 at a time, per second", 0},
	{"idle-rss", "RSS per idle connection, 1000 held, KB", 1},
	{"idle-rss-used", "same, after each connection echoed 256 KiB, KB", 1},
	{"pgbench-S", "pgbench -S (select only), 8 clients, tps", 0},
	{"pgbench-N", "pgbench -N (simple update), 8 clients, tps", 0},
	{"pgbench-SC", "pgbench -S -C (new connection per transaction), tps", 0},
	{"scale-echoes", "scale: 10000 connections echoing 64 B every second for 60 s, echoes checked", 0},
	{"scale-rate", "scale: echoes per second achieved (10000 due)", 0},
	{"scale-rtt-p50", "scale: echo round trip under that load, p50 ms", 1},
	{"scale-rtt-p99", "scale: echo round trip under that load, p99 ms", 1},
	{"scale-rss-entry", "scale: RSS of the entry, MB", 1},
	{"scale-rss-exit", "scale: RSS of the exit, MB", 1},
	{"scale-rss", "scale: RSS of both agents, MB", 1},
	{"scale-rss-conn", "scale: RSS of both agents per connection, KB", 1},
	{"scale-cpu", "scale: CPU seconds of both agents during the run", 2},
	{"scale-cpu-pct", "scale: CPU of both agents, % of one core", 1},
	{"scale-goroutines", "scale: goroutines of both agents", 0},
}

// table collects the figures of one run. It is used from one goroutine at
// a time (sub-benchmarks run one after another).
type table struct {
	vals   map[string]*[columns]float64 // 0: not measured
	labels map[string]string            // labels that differ from rows'
}

func newTable() *table {
	return &table{vals: make(map[string]*[columns]float64), labels: make(map[string]string)}
}

// relabel replaces the label of a row, e.g. when a setting changed the
// workload it names.
func (t *table) relabel(key, label string) { t.labels[key] = label }

// set records a figure.
func (t *table) set(key string, c column, v float64) {
	if t.vals[key] == nil {
		t.vals[key] = new([columns]float64)
	}
	t.vals[key][c] = v
}

// print writes the table as Markdown, with aligned columns so that it reads
// in a terminal too.
func (t *table) print(w io.Writer, machine string) {
	var shown []column // the peers measured for some figure
	for c := stunnel; c < columns; c++ {
		for _, v := range t.vals {
			if v[c] != 0 {
				shown = append(shown, c)
				break
			}
		}
	}
	head := []string{"figure", "direct", "tunnel", "tunnel/direct"}
	for _, c := range shown {
		head = append(head, c.heading())
	}
	cells := [][]string{head}
	for _, r := range rows {
		v := t.vals[r.key]
		if v == nil {
			continue
		}
		num := func(x float64) string {
			if x == 0 {
				return "–"
			}
			return fmt.Sprintf("%.*f", r.decimals, x)
		}
		ratio := "–"
		if v[direct] != 0 && v[tunnel] != 0 {
			ratio = fmt.Sprintf("%.2f", v[tunnel]/v[direct])
		}
		label := r.label
		if l, ok := t.labels[r.key]; ok {
			label = l
		}
		line := []string{label, num(v[direct]), num(v[tunnel]), ratio}
		for _, c := range shown {
			line = append(line, num(v[c]))
		}
		cells = append(cells, line)
	}
	if len(cells) == 1 {
		return
	}
	width := make([]int, len(head))
	for _, line := range cells {
		for i, c := range line {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	pad := func(s string, i int) string {
		fill := strings.Repeat(" ", width[i]-len([]rune(s)))
		if i == 0 {
			return s + fill
		}
		return fill + s
	}
	fmt.Fprintf(w, "\nThe whole path on %s:\n\n", machine)
	for n, line := range cells {
		var sb strings.Builder
		for i, c := range line {
			sb.WriteString("| " + pad(c, i) + " ")
		}
		fmt.Fprintln(w, sb.String()+"|")
		if n == 0 {
			sb.Reset()
			for i := range line {
				dashes := strings.Repeat("-", width[i])
				if i > 0 {
					dashes = dashes[1:] + ":"
				}
				sb.WriteString("| " + dashes + " ")
			}
			fmt.Fprintln(w, sb.String()+"|")
		}
	}
	fmt.Fprintln(w)
}
