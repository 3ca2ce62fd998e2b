// Package pressure puts load on the exit agent's open port, against the
// real binary: slow handshakes (slowloris), a flood of authorized-looking
// handshakes that never finish, silent connections from one source, and an
// authenticated entry that misbehaves inside its session (stream flood, ping
// flood, a stream whose reader never reads, streams refused and stuffed with
// data). Each test checks that the exit's guards hold (the hello deadline
// and the handshake timeout, --max-handshakes with ALERT busy,
// --handshake-rate and the per-source cap on handshakes in progress,
// --max-streams with status 4, refused streams drained and counted, the ping
// flood guard, yamux flow control), that the exit's memory stays bounded
// (its /status endpoint and /proc), and that a well-behaved entry keeps
// moving data meanwhile. Figures (handshakes per second, throughput, memory)
// are printed with t.Logf, never asserted as speeds. The package has only
// tests.
package pressure
