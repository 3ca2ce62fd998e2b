// Package perf benchmarks the whole path through the real tunnel binary:
// application, entry, exit and server on loopback, each figure measured in
// the same run directly (the baseline) and through an entry/exit pair, and
// printed at the end as one table with the ratio of the two. Run it with
//
//	go test -run '^$' -bench . -benchtime 1x -timeout 30m ./integration/perf
//
// from the repository root; it takes a few minutes. Each figure is a
// sub-benchmark of BenchmarkPath that -bench can select on its own, e.g.
// -bench 'Path/bulk' or -bench 'Path/(rtt|pgbench)'. Every workload is one
// fixed run, so -benchtime must be 1x. The figures:
//
//   - bulk: one connection, MB/s (10^6 bytes per second) up and down, and the
//     CPU seconds (user and system) that both agents spend per GB moved;
//     once wherever the scheduler puts the agents, and once with the entry
//     on CPU 0 and the exit on CPU 1, as two hosts would run them (the
//     client and the server are unpinned; needs two CPUs);
//   - rtt: a 64-byte echo round trip, p50 and p99, once with the client, both
//     agents and the echo server pinned to CPU 0 (taskset), once unpinned;
//   - connrate: connect, echo 64 bytes and close, 8 connections at a time;
//   - idle: RSS of both agents per connection with 1,000 connections held
//     idle, and again after each of them echoed 256 KiB and went idle;
//   - pgbench: 8 clients against a throwaway PostgreSQL, select-only (-S),
//     simple-update (-N) and a new connection per transaction (-S -C);
//   - scale: 10,000 connections through one entry and one exit, each
//     echoing 64 bytes once a second for 60 s, the sends spread over the
//     second: the echoes per second achieved (a machine that cannot keep up
//     makes the echoes late, not wrong), the round trips, the RSS of each
//     agent, their CPU time over the run and their goroutines. It raises
//     the test's own open-file limit to the hard limit and needs a hard
//     limit of at least the connections plus 256 (ulimit -Hn); below that
//     it is skipped, saying so.
//
// It is a benchmark, not a test: it checks that every byte arrives as sent
// and that nothing fails, never how fast anything is. The agents are built
// without the race detector.
//
// The bulk, rtt, connrate and pgbench figures are also measured, in the same
// run, through the peers an operator compares tunnel with, each one that is
// installed: a stunnel client and server (stunnel4; TLS 1.3 with ECDSA
// P-256), a spiped pair (spiped) and ssh -L through sshd with
// aes256-gcm@openssh.com (openssh-client and openssh-server; only as root,
// which sshd needs). TUNNEL_PERF_PEERS picks some of them, e.g.
// "stunnel,ssh", or "none".
//
// The sizes and durations can be changed through the environment:
// TUNNEL_PERF_BULK_MIB (1024 each way), TUNNEL_PERF_RTT_COUNT (20000 round
// trips), TUNNEL_PERF_CONNRATE_SECONDS (5), TUNNEL_PERF_IDLE_CONNS (1000) and
// TUNNEL_PERF_PGBENCH_SECONDS (10 per run), TUNNEL_PERF_SCALE_CONNS (10000)
// and TUNNEL_PERF_SCALE_SECONDS (60).
//
// It needs taskset (Debian package util-linux) and, for the pgbench figures,
// PostgreSQL's server and pgbench (postgresql, which brings postgresql-15 and
// postgresql-client); without them those figures are skipped.
//
// The package has only benchmarks: go test without -bench runs nothing.
package perf
