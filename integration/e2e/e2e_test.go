// Package e2e runs the real tunnel binary end to end: keys made with
// "tunnel keygen", an exit agent in front of a real backend and an entry
// agent in front of the test's clients, each a separate process talking
// over loopback TCP. Agents are started with --listen 127.0.0.1:0 and their
// ports are read from the "listening" log line (see the log contract).
package e2e

import (
	"testing"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }
