package tunnel

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Returning memory after a burst. A burst of traffic grows the heap (copy
// buffers, yamux's receive buffers), and once it is over the Go runtime
// keeps the freed pages and gives them back to the OS only slowly, so a
// sidecar that carried one burst would hold its peak for minutes. An agent
// that has gone quiet returns them at once.
const (
	releaseCheck = 2 * time.Second
	quietAllocs  = 4 << 20  // allocated in one releaseCheck: below this the agent is quiet
	releaseAbove = 16 << 20 // free heap pages worth returning
)

// releaseWhenQuiet checks every interval (releaseCheck) whether the
// process allocated little since the last check while the heap holds much
// free memory, and then returns that memory to the OS. It returns when ctx
// ends.
func releaseWhenQuiet(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	samples := []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
	var last uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		metrics.Read(samples)
		allocs, free := samples[0].Value.Uint64(), samples[1].Value.Uint64()
		quiet := allocs-last < quietAllocs
		last = allocs
		if quiet && free > releaseAbove {
			debug.FreeOSMemory()
		}
	}
}
