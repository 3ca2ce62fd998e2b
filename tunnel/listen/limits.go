package listen

import (
	"syscall"

	"github.com/rs/zerolog"
)

// Every connection an agent carries holds one file descriptor on it: the
// entry holds the application's connection, the exit the one it dialed to
// the backend. Each session with a peer holds one more, and a few are the
// agent's own (standard streams, listeners, the runtime's poller). So the
// open-file limit, RLIMIT_NOFILE, caps how many connections an agent can
// carry at once; past it, accepts and dials fail with "too many open files".
//
// The agents do not raise the limit themselves: the Go runtime (since Go
// 1.19, in package syscall's init) raises the soft limit to the hard limit
// at start-up, as far as the hard limit allows (Go 1.26 stops one short of
// it). Checked on Linux: an exit started with `prlimit --nofile=1024:20000`
// shows 19999 and 20000 in /proc/PID/limits. What is left to the operator is
// the hard limit, so the agent says so when it is low.

// lowFileLimit is the open-file limit below which an agent warns at start.
// It leaves room for the 10,000 concurrent connections the agents are
// measured with (integration/perf, Path/scale), and lies above the low
// limits commonly met: 1024 (the soft limit of many shells and of systemd
// services before systemd 240), 4096 and 8192 (hard limits of some
// distributions' logins). It is not a power of two so that a hard limit of
// 16384, of which Go leaves the soft limit at 16383, raises no warning.
const lowFileLimit = 16000

// fdReserve is about how many descriptors an agent holds besides the
// connections it carries: stdin, stdout and stderr, its listener and the
// status endpoint's, the session, the poller and a few the runtime opens.
const fdReserve = 16

// WarnLowFileLimit logs one warning on log when this process's open-file
// limit is below lowFileLimit, with about how many connections it allows
// and how to raise it. Call it once at start-up, after the Go runtime has
// raised the soft limit.
func WarnLowFileLimit(log zerolog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn().Err(err).Msg("cannot read the open-file limit (RLIMIT_NOFILE); each connection carried needs one open file")
		return
	}
	warnFileLimit(log, lim.Cur, lim.Max)
}

// warnFileLimit is WarnLowFileLimit for a soft limit soft and a hard limit
// hard.
func warnFileLimit(log zerolog.Logger, soft, hard uint64) {
	if soft >= lowFileLimit {
		return
	}
	conns := uint64(0)
	if soft > fdReserve {
		conns = soft - fdReserve
	}
	log.Warn().Uint64("open_files_limit", soft).Uint64("hard_limit", hard).Uint64("connections", conns).
		Msgf("the open-file limit is low: this agent can carry about %d connections at once "+
			"(each holds one open file here), beyond that new ones fail with \"too many open files\"; "+
			"raise the limit, e.g. to 65536: ulimit -n 65536 in the shell that starts it, "+
			"LimitNOFILE=65536 in its systemd unit, or the container's nofile ulimit "+
			"(docker run --ulimit nofile=65536:65536, ulimits: nofile: in compose)",
			conns)
}
