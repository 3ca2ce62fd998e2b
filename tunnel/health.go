package tunnel

import (
	"context"
	"fmt"
	"time"
)

// Readiness, as the status endpoint's /readyz reports it.
//
// The entry is ready while it has a session with the exit. The exit is
// ready while the backend of every service accepts connections, as package
// backendprobe tells: a stream's dial that succeeded lately says so for
// free, and however often /readyz is asked a backend sees at most one probe
// connection per backendprobe.Every.
// Whether the agent is still accepting (not draining) is the caller's part.

// Ready returns nil while the entry has a session with the exit, and
// otherwise why it has none. Safe for concurrent use.
func (e *Entry) Ready(context.Context) error { return e.keeper.Ready() }

// Attempted waits until the entry's first attempt to reach the exit has
// ended, with a session or a failure (Ready then tells which), and returns
// nil; or until ctx ends, and returns its error. Serve makes the attempts.
// Safe for concurrent use.
func (e *Entry) Attempted(ctx context.Context) error { return e.keeper.Attempted(ctx) }

// Ready returns nil while the backend of every service of the exit accepts
// TCP connections (see above), and otherwise the first dial error, naming
// its service unless it is the default one. A probe honours ctx. Safe for
// concurrent use.
func (e *Exit) Ready(ctx context.Context) error {
	for _, r := range e.fwd.routes.all {
		if err := r.probe.Check(ctx, time.Now()); err != nil && r.name != "" {
			return fmt.Errorf("service %s: %w", r.name, err)
		} else if err != nil {
			return err
		}
	}
	return nil
}
