package mitm

import (
	"testing"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestMITM runs every attack. The groups and the cases in them run in
// parallel; they share the binary and one pair of keys, made here once.
func TestMITM(t *testing.T) {
	e := harness.NewRig(t)
	t.Run("record", func(t *testing.T) { t.Parallel(); testRecords(t, e) })
	t.Run("length", func(t *testing.T) { t.Parallel(); testLengths(t, e) })
	t.Run("cut", func(t *testing.T) { t.Parallel(); testCuts(t, e) })
	t.Run("blackhole", func(t *testing.T) { t.Parallel(); testBlackholes(t, e) })
	t.Run("handshake", func(t *testing.T) { t.Parallel(); testHandshakes(t, e) })
}
