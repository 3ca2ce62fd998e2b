package tunnel

// The agents' settings, as the library takes them: only what an agent uses
// once its keys are loaded. Where the settings come from (flags, a file) and
// what the command does besides (listen addresses, the status endpoint, key
// files) are the command's: cmd/tunnel maps its flags onto these types.
//
// A zero field means its default (the config.Default* constants), so that
// EntrySettings{Peers: ...} is a working entry.

import (
	"time"

	"github.com/tunnel-dev/tunnel/config"
)

// EntrySettings are an entry agent's settings. Zero fields take their
// defaults.
type EntrySettings struct {
	// Peers are the exits' addresses, HOST:PORT, in order of preference:
	// the entry keeps a session with one and fails over to the next. A name
	// is looked up again on every reconnect. At least one is required.
	Peers            []string
	DialTimeout      time.Duration // to reach an exit, and wait for a session; default 5s
	HandshakeTimeout time.Duration // default 10s
	KeepAlive        time.Duration // interval of the session's keepalive pings; default 15s
	Window           uint32        // per-stream flow-control window in bytes; default 1 MiB
	DrainTimeout     time.Duration // how long open connections may finish on shutdown; default 30s
	// ResumeWindow is how long a session whose connection broke waits for
	// a new one, its streams paused, before they are reset; default 60s,
	// negative: off. The shorter of the two agents' windows applies.
	ResumeWindow time.Duration
}

// ExitSettings are an exit agent's settings. Zero fields take their
// defaults.
type ExitSettings struct {
	// Services are the services the exit forwards to backends. A service
	// the program serves itself (Exit.Listen) is not listed.
	Services []ExitService
	// Access restricts services to some authorized keys; a service no rule
	// names admits every authorized key. At most one rule per service.
	Access           []AccessRule
	DialTimeout      time.Duration // to dial a backend, and a Listener's wait for Accept; default 5s
	HandshakeTimeout time.Duration // default 10s
	MaxHandshakes    int           // handshakes in progress at once; default 64
	MaxStreams       int           // concurrent streams per session; default 4096
	KeepAlive        time.Duration // interval of each session's keepalive pings; default 15s
	Window           uint32        // per-stream flow-control window in bytes; default 1 MiB
	DrainTimeout     time.Duration // how long open streams may finish on shutdown; default 30s
	HandshakeRate    float64       // new handshakes per second from one source IP; default 10
	// RequireSignedHello refuses entries that speak handshake version 1,
	// whose hello is not signed.
	RequireSignedHello bool
	// ResumeWindow is how long a session whose connection broke is kept
	// for the entry to resume it; default 60s, negative: off.
	ResumeWindow time.Duration
}

// ExitService is one service of an exit and its backend.
type ExitService struct {
	// Name is the service's name; "" or config.DefaultService ("default")
	// is the default service.
	Name string
	// Backend is what the exit dials for each stream: HOST:PORT, or
	// unix:PATH for a UNIX socket.
	Backend string
	// ProxyProtocol starts each backend connection with a PROXY protocol v2
	// header (the application's address, and the entry key's fingerprint).
	ProxyProtocol bool
}

// AccessRule restricts a service to some authorized keys.
type AccessRule struct {
	Service string // as ExitService.Name
	// Keys are fingerprints ("SHA256:...") or the names of authorized keys
	// (a key file's name without its extension: app1 for app1.pub). Each
	// must name an authorized key; none admits nobody.
	Keys []string
}

// withDefaults returns s with its zero fields at their defaults.
func (s EntrySettings) withDefaults() EntrySettings {
	orDefault(&s.DialTimeout, config.DefaultDialTimeout)
	orDefault(&s.HandshakeTimeout, config.DefaultHandshakeTimeout)
	orDefault(&s.KeepAlive, config.DefaultKeepAlive)
	orDefault(&s.Window, config.DefaultWindow)
	orDefault(&s.DrainTimeout, config.DefaultDrainTimeout)
	orDefault(&s.ResumeWindow, config.DefaultResumeWindow)
	return s
}

// withDefaults returns s with its zero fields at their defaults.
func (s ExitSettings) withDefaults() ExitSettings {
	orDefault(&s.DialTimeout, config.DefaultDialTimeout)
	orDefault(&s.HandshakeTimeout, config.DefaultHandshakeTimeout)
	orDefault(&s.MaxHandshakes, config.DefaultMaxHandshakes)
	orDefault(&s.MaxStreams, config.DefaultMaxStreams)
	orDefault(&s.KeepAlive, config.DefaultKeepAlive)
	orDefault(&s.Window, config.DefaultWindow)
	orDefault(&s.DrainTimeout, config.DefaultDrainTimeout)
	orDefault(&s.HandshakeRate, config.DefaultHandshakeRate)
	orDefault(&s.ResumeWindow, config.DefaultResumeWindow)
	return s
}

func orDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}
