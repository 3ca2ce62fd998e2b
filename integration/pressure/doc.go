// Package pressure puts load on the exit agent's open port, against the
// real binary: slow handshakes (slowloris), a flood of authorized-looking
// handshakes that never finish, and an authenticated entry that misbehaves
// inside its session (stream flood, ping flood, a stream whose reader never
// reads). Each test checks that the exit's guards hold (handshake timeout,
// --max-handshakes with ALERT busy, --handshake-rate, --max-streams with
// status 4, the ping flood guard, yamux flow control), that the exit's
// memory stays bounded (its /status endpoint and /proc), and that a
// well-behaved entry keeps moving data meanwhile. Figures (handshakes per
// second, throughput, memory) are printed with t.Logf, never asserted as
// speeds. The package has only tests.
package pressure
