package main

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/alecthomas/kong"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/cmd/tunnel/demo"
	"github.com/tunnel-dev/tunnel/config"
	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel"
	"github.com/tunnel-dev/tunnel/tunnel/listen"
	"github.com/tunnel-dev/tunnel/tunnel/sandbox"
	"github.com/tunnel-dev/tunnel/tunnel/status"
)

type exitCmd struct {
	Listen                string        `help:"Address to accept entry agents on (HOST:PORT or :PORT; port 0 picks a free one). Default ${default}, every interface, which is logged as a warning: name the address entries connect to." default:"${exit_listen}" placeholder:"ADDR"`
	Forward               []string      `help:"Backend to dial for each stream (HOST:PORT, or a UNIX socket, unix:PATH), for the default service; NAME=HOST:PORT (NAME=unix:PATH) forwards the service NAME. Repeat it for several services. Required (here or under services: in the --config file)." placeholder:"[NAME=]HOST:PORT" sep:"none"`
	Allow                 []string      `help:"Let only these authorized keys reach a service: SERVICE=KEY[,KEY...], where KEY is a fingerprint (SHA256:...) or the name of a key file in --authorized-keys without .pub (app1 for app1.pub); the default service is called default. A service no --allow names admits every authorized key. Repeatable." placeholder:"SERVICE=KEY,..." sep:"none"`
	Services              exitServices  `help:"Named services as YAML, usually under services: in the --config file: a map of service name to {forward: HOST:PORT, allow: [KEY, ...], proxy-protocol: true}." placeholder:"YAML"`
	ProxyProtocol         []string      `help:"Start each backend connection of these services (the default service is called default) with a PROXY protocol v2 header: the application's address as the entry saw it, and a TLV (type 0xE0) with the entry key's fingerprint. Only for a backend that expects it." placeholder:"SERVICE,..."`
	Key                   string        `help:"This exit's private key file (.key from tunnel keygen). Required." placeholder:"FILE"`
	AuthorizedKeys        string        `help:"Entry agents allowed in: a file of PUBLIC KEY PEM blocks, or a directory of .pub/.pem files. Required." placeholder:"FILE|DIR"`
	DialTimeout           time.Duration `help:"Give up dialing the backend after this long." default:"${dial_timeout}"`
	HandshakeTimeout      time.Duration `help:"Drop an entry agent that has not finished the handshake after this long." default:"${handshake_timeout}"`
	MaxHandshakes         int           `help:"Limit on handshakes in progress at once (RSA work is costly: this caps what a flood of connections can make the exit do)." default:"${max_handshakes}"`
	MaxStreams            int           `help:"Limit on concurrent streams (app connections) per entry session." default:"${max_streams}"`
	KeepAlive             time.Duration `name:"keepalive" help:"Interval of keepalive pings on each session, which also detect a dead peer." default:"${keepalive}"`
	Window                uint32        `help:"Per-stream flow-control window in bytes (262144 to 2147483648); larger helps throughput on high-latency links." default:"${window}"`
	DrainTimeout          time.Duration `help:"On SIGINT/SIGTERM, how long open streams may finish before they are cut." default:"${drain_timeout}"`
	HandshakeRate         float64       `help:"New handshakes per second allowed from one source IP (burst: twice that); more are answered busy." default:"${handshake_rate}"`
	StatusAddr            string        `help:"Serve /status (JSON counters), /metrics (Prometheus), /healthz (liveness) and /readyz (200 while the backend accepts connections) on this address, e.g. :9070, which means 127.0.0.1:9070 (name a host, such as 0.0.0.0:9070, to serve other hosts). Off when empty." placeholder:"ADDR"`
	AllowInsecureKeyPerms bool          `help:"Use a --key file that group or others may read (refused otherwise), for containers where a mounted Secret sets its mode."`
	ResumeWindow          time.Duration `help:"How long a session whose connection broke is kept, its streams and backend connections paused, for the entry to resume it on a new connection; 0 turns resumption off. The shorter of the two agents' windows applies." default:"${resume_window}"`
	Sandbox               bool          `help:"${sandbox_help}" default:"true" negatable:""`
	WatchInterval         time.Duration `help:"${watch_help}" default:"${watch_interval}"`
	PrintConfig           bool          `help:"Print the settings in effect (from flags, TUNNEL_* variables, the --config file and defaults) as a config file, and exit. Key files appear as paths; no key is read."`
	RequireSignedHello    bool          `help:"Refuse entries whose handshake hello is not signed (protocol version 1, from builds before signed hellos), so that a flood of forged hellos costs this exit neither a handshake slot nor RSA work. Turn it on once every entry is upgraded."`
}

func (c *exitCmd) settings() (config.Exit, error) {
	s := config.Exit{
		Listen: c.Listen, Key: c.Key, AuthorizedKeys: c.AuthorizedKeys,
		DialTimeout: c.DialTimeout, HandshakeTimeout: c.HandshakeTimeout,
		MaxHandshakes: c.MaxHandshakes, MaxStreams: c.MaxStreams, KeepAlive: c.KeepAlive,
		Window: c.Window, DrainTimeout: c.DrainTimeout,
		HandshakeRate: c.HandshakeRate, StatusAddr: c.StatusAddr,
		AllowInsecureKeyPerms: c.AllowInsecureKeyPerms, RequireSignedHello: c.RequireSignedHello,
		ResumeWindow: c.ResumeWindow,
	}
	s.ProxyProtocol = c.ProxyProtocol
	err := exitServiceSettings(&s, c.Forward, c.Allow, c.Services)
	return s, err
}

// Run validates the settings, loads the keys, binds, logs "exit ready" and serves until e.ctx
// is done.
func (c *exitCmd) Run(e *env, kctx *kong.Context) error {
	if c.PrintConfig {
		return printConfig(e, kctx)
	}
	s, err := c.settings()
	if err == nil {
		err = s.Validate()
	}
	if err != nil {
		return usageError{err}
	}
	key, err := loadPrivateKey(s.Key, s.AllowInsecureKeyPerms)
	if err != nil {
		return err
	}
	auth, err := handshake.LoadAuthorizedKeys(s.AuthorizedKeys)
	if err != nil {
		return usagef("--authorized-keys %v", err)
	}
	x, err := tunnel.NewExit(tunnel.ExitConfig{Settings: exitSettings(s), Key: key, Authorized: auth, Version: e.build.Version}, e.log)
	if unknown := (*tunnel.UnknownKeysError)(nil); errors.As(err, &unknown) {
		return usageError{allowError(unknown, s.AuthorizedKeys)}
	}
	if err != nil {
		return usageError{err}
	}
	// reload re-reads --key and --authorized-keys (on SIGHUP; one goroutine).
	reload := func(log zerolog.Logger) {
		newKey, err := loadPrivateKey(s.Key, s.AllowInsecureKeyPerms)
		if err != nil {
			log.Error().Err(err).Msg("reload failed; the previous keys stay in force")
			return
		}
		newAuth, err := handshake.LoadAuthorizedKeys(s.AuthorizedKeys)
		if err != nil {
			log.Error().Err(fmt.Errorf("--authorized-keys %w", err)).Msg("reload failed; the previous keys stay in force")
			return
		}
		closing, err := x.Reload(newKey, newAuth)
		if err != nil {
			log.Error().Err(err).Msg("reload failed; the previous keys stay in force")
			return
		}
		added, removed := keyDiff(auth.Fingerprints(), newAuth.Fingerprints())
		ev := keyChange(log.Info(), key, newKey).Strs("authorized_added", added).Strs("authorized_removed", removed)
		if closing > 0 {
			ev = ev.Int("sessions_closing", closing).Str("drain_timeout", s.DrainTimeout.String())
		}
		ev.Msg("keys reloaded")
		key, auth = newKey, newAuth
	}
	var policy *sandbox.Policy
	if c.Sandbox {
		p := exitSandbox(s, e.config.path)
		policy = &p
	}
	return serve(e, agent{
		role: "exit", listen: []config.EntryListener{{Addr: s.Listen}}, statusAddr: s.StatusAddr, reload: reload, sandbox: policy,
		watch: []string{s.Key, s.AuthorizedKeys, e.config.path}, watchInterval: c.WatchInterval,
		serve: func(ctx context.Context, lns []tunnel.ServiceListener) error { return x.Serve(ctx, lns[0].Listener) },
		stats: x.Stats, readiness: x.Ready, metrics: x.Metrics(),
		ready: func(ev *zerolog.Event) *zerolog.Event {
			return ev.Str("fingerprint", handshake.Fingerprint(&key.PublicKey)).
				Strs("authorized", auth.Fingerprints()).Strs("services", serviceList(s))
		},
	})
}

type entryCmd struct {
	Listen                []string      `help:"Address to accept apps on (HOST:PORT or :PORT; port 0 picks a free one; or a UNIX socket, unix:PATH), for the exit's default service; HOST:PORT=NAME (unix:PATH=NAME) for the exit's service NAME. Repeat it for several services. Without any (here or under services: in the --config file): ${entry_listen}. This side is plaintext: an address other hosts can reach (:5000 is every interface) is logged as a warning." placeholder:"ADDR[=NAME]" sep:"none"`
	ListenMode            socketMode    `help:"Permission bits, in octal, of the socket file of each --listen unix:PATH (one under services: may set its own mode:), e.g. 0660 to let the owner and the group connect. Without it the umask decides." placeholder:"MODE"`
	Services              entryServices `help:"Listeners for named services as YAML, usually under services: in the --config file: a list of {listen: HOST:PORT or unix:PATH, service: NAME, mode: \"0660\"}." placeholder:"YAML"`
	Peer                  []string      `help:"An exit agent to connect to (HOST:PORT), or HOST:PORT=FILE|DIR to pin that exit's own public keys instead of --peer-key. Repeat it (or separate with commas) for several exits, in order of preference: the entry keeps a session to one and fails over to the next. A name is looked up again on every reconnect, and each of its addresses counts as an exit. Required." placeholder:"HOST:PORT[=KEYS]"`
	Key                   string        `help:"This entry's private key file (.key from tunnel keygen). Required." placeholder:"FILE"`
	PeerKey               string        `help:"The exit's public keys: a file of one or more PUBLIC KEY blocks, or a directory of .pub/.pem files; the exit must prove it holds the private key of one of them (two while its key is rotated). Required, unless every --peer names its own." placeholder:"FILE|DIR"`
	DialTimeout           time.Duration `help:"Give up dialing the exit agent after this long." default:"${dial_timeout}"`
	HandshakeTimeout      time.Duration `help:"Give up on a handshake with the exit after this long." default:"${handshake_timeout}"`
	KeepAlive             time.Duration `name:"keepalive" help:"Interval of keepalive pings on the session, which also detect a dead exit." default:"${keepalive}"`
	Window                uint32        `help:"Per-stream flow-control window in bytes (262144 to 2147483648); larger helps throughput on high-latency links." default:"${window}"`
	DrainTimeout          time.Duration `help:"On SIGINT/SIGTERM, how long open streams may finish before they are cut." default:"${drain_timeout}"`
	ResumeWindow          time.Duration `help:"How long to keep resuming a session whose connection to the exit broke (a reset, a blackhole), its application connections paused, before they are reset; 0 turns resumption off. The shorter of the two agents' windows applies." default:"${resume_window}"`
	StatusAddr            string        `help:"Serve /status (JSON counters), /metrics (Prometheus), /healthz (liveness) and /readyz (200 while a session with the exit is up) on this address, e.g. :9071, which means 127.0.0.1:9071 (name a host, such as 0.0.0.0:9071, to serve other hosts). Off when empty." placeholder:"ADDR"`
	AllowInsecureKeyPerms bool          `help:"Use a --key file that group or others may read (refused otherwise), for containers where a mounted Secret sets its mode."`
	Sandbox               bool          `help:"${sandbox_help}" default:"true" negatable:""`
	WatchInterval         time.Duration `help:"${watch_help}" default:"${watch_interval}"`
	PrintConfig           bool          `help:"Print the settings in effect (from flags, TUNNEL_* variables, the --config file and defaults) as a config file, and exit. Key files appear as paths; no key is read."`
}

func (c *entryCmd) settings() (config.Entry, error) {
	s := config.Entry{
		Peers: c.Peer, Key: c.Key, PeerKey: c.PeerKey,
		DialTimeout: c.DialTimeout, HandshakeTimeout: c.HandshakeTimeout, KeepAlive: c.KeepAlive,
		Window: c.Window, DrainTimeout: c.DrainTimeout, StatusAddr: c.StatusAddr,
		AllowInsecureKeyPerms: c.AllowInsecureKeyPerms, ListenMode: fs.FileMode(c.ListenMode),
		ResumeWindow: c.ResumeWindow,
	}
	err := entryListenerSettings(&s, c.Listen, c.Services)
	return s, err
}

// Run validates the settings, loads the keys, binds, logs "entry ready" and serves until e.ctx
// is done.
func (c *entryCmd) Run(e *env, kctx *kong.Context) error {
	if c.PrintConfig {
		return printConfig(e, kctx)
	}
	s, err := c.settings()
	if err == nil {
		err = s.Validate()
	}
	if err != nil {
		return usageError{err}
	}
	key, err := loadPrivateKey(s.Key, s.AllowInsecureKeyPerms)
	if err != nil {
		return err
	}
	pinned, exitKeys, err := loadPinned(s)
	if err == nil {
		err = ownKeyNotPinned(s, key, pinned, exitKeys)
	}
	if err != nil {
		return usageError{err}
	}
	n, err := tunnel.NewEntry(tunnel.EntryConfig{Settings: entrySettings(s), Key: key, PeerKeys: pinned, ExitKeys: exitKeys, Version: e.build.Version}, e.log)
	if err != nil {
		return err
	}
	// reload re-reads --key and --peer-key (on SIGHUP; one goroutine).
	reload := func(log zerolog.Logger) {
		newKey, err := loadPrivateKey(s.Key, s.AllowInsecureKeyPerms)
		if err != nil {
			log.Error().Err(err).Msg("reload failed; the previous keys stay in force")
			return
		}
		newPinned, newExitKeys, err := loadPinned(s)
		if err == nil {
			err = ownKeyNotPinned(s, newKey, newPinned, newExitKeys)
		}
		if err != nil {
			log.Error().Err(err).Msg("reload failed; the previous keys stay in force")
			return
		}
		if err := n.Reload(newKey, newPinned, newExitKeys); err != nil {
			log.Error().Err(err).Msg("reload failed; the previous keys stay in force")
			return
		}
		added, removed := keyDiff(pinnedFingerprints(pinned, exitKeys), pinnedFingerprints(newPinned, newExitKeys))
		keyChange(log.Info(), key, newKey).Strs("pinned_added", added).Strs("pinned_removed", removed).
			Msg("keys reloaded")
		key, pinned, exitKeys = newKey, newPinned, newExitKeys
	}
	var policy *sandbox.Policy
	if c.Sandbox {
		p := entrySandbox(s, e.config.path)
		policy = &p
	}
	return serve(e, agent{
		role: "entry", listen: s.AllListeners(), statusAddr: s.StatusAddr, plaintext: true, reload: reload, sandbox: policy,
		watch: entryWatched(s, e.config.path), watchInterval: c.WatchInterval,
		serve: n.ServeListeners, stats: n.Stats, readiness: n.Ready, attempted: n.Attempted, metrics: n.Metrics(),
		ready: func(ev *zerolog.Event) *zerolog.Event {
			return ev.Str("fingerprint", handshake.Fingerprint(&key.PublicKey)).
				Strs("peers", s.Peers).Strs("peer_fingerprints", pinnedFingerprints(pinned, exitKeys))
		},
	})
}

// allowError says, in the terms of the flags, which --allow rules name keys that
// --authorized-keys does not hold.
func allowError(e *tunnel.UnknownKeysError, authorizedKeys string) error {
	var rules []string
	for _, r := range e.Rules {
		rules = append(rules, "--allow "+config.DisplayName(r.Service)+"="+strings.Join(r.Keys, ","))
	}
	return fmt.Errorf("%s: no such key in --authorized-keys %s: name a key by its fingerprint (tunnel fingerprint FILE prints it) "+
		"or by its file's name without .pub (app1 for app1.pub), and authorize it", strings.Join(rules, ", "), authorizedKeys)
}

// entryWatched lists what the entry watches: its key files and --config file.
func entryWatched(s config.Entry, configFile string) []string {
	files := []string{s.Key, s.PeerKey, configFile}
	for _, spec := range s.Peers {
		_, path := config.ParsePeer(spec)
		files = append(files, path)
	}
	return files
}

// exitSettings maps the exit's validated settings onto the library's: its
// services, the default first, and their access rules. The rest (listen and
// status addresses, key paths) is the command's.
func exitSettings(s config.Exit) tunnel.ExitSettings {
	t := tunnel.ExitSettings{
		DialTimeout: s.DialTimeout, HandshakeTimeout: s.HandshakeTimeout,
		MaxHandshakes: s.MaxHandshakes, MaxStreams: s.MaxStreams,
		KeepAlive: s.KeepAlive, Window: s.Window, DrainTimeout: s.DrainTimeout,
		HandshakeRate: s.HandshakeRate, RequireSignedHello: s.RequireSignedHello,
		ResumeWindow: libraryWindow(s.ResumeWindow),
	}
	for _, svc := range s.AllServices() {
		t.Services = append(t.Services, tunnel.ExitService{
			Name: svc.Name, Backend: svc.Forward,
			ProxyProtocol: slices.Contains(s.ProxyProtocol, config.DisplayName(svc.Name)),
		})
	}
	for _, a := range s.Access {
		t.Access = append(t.Access, tunnel.AccessRule{Service: a.Service, Keys: a.Keys})
	}
	return t
}

// entrySettings maps the entry's validated settings onto the library's:
// the exits' addresses without their key paths, and the tunables. The
// listeners are the command's (serve binds them).
func entrySettings(s config.Entry) tunnel.EntrySettings {
	t := tunnel.EntrySettings{
		DialTimeout: s.DialTimeout, HandshakeTimeout: s.HandshakeTimeout,
		KeepAlive: s.KeepAlive, Window: s.Window, DrainTimeout: s.DrainTimeout,
		ResumeWindow: libraryWindow(s.ResumeWindow),
	}
	for _, spec := range s.Peers {
		addr, _ := config.ParsePeer(spec)
		t.Peers = append(t.Peers, addr)
	}
	return t
}

// libraryWindow maps --resume-window onto the library's ResumeWindow, where
// zero means the default and a negative window turns resumption off.
func libraryWindow(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// loadPinned loads the exits' keys the entry pins: --peer-key (nil if it is not given), and the
// keys of each --peer HOST:PORT=KEYS, by address.
func loadPinned(s config.Entry) (*handshake.KeySet, map[string]*handshake.KeySet, error) {
	var shared *handshake.KeySet
	if s.PeerKey != "" {
		ks, err := handshake.LoadAuthorizedKeys(s.PeerKey)
		if err != nil {
			return nil, nil, fmt.Errorf("--peer-key %w", err)
		}
		shared = ks
	}
	exits := map[string]*handshake.KeySet{}
	for _, spec := range s.Peers {
		addr, path := config.ParsePeer(spec)
		if path == "" {
			continue
		}
		ks, err := handshake.LoadAuthorizedKeys(path)
		if err != nil {
			return nil, nil, fmt.Errorf("--peer %s=%w", addr, err)
		}
		exits[addr] = ks
	}
	return shared, exits, nil
}

// ownKeyNotPinned refuses an entry that pins its own public key as an exit's: the usual cause
// is one directory of public keys for entries and exits alike, which makes every entry's key an
// exit key, so that any entry could pose as the exit to the others.
func ownKeyNotPinned(s config.Entry, key *rsa.PrivateKey, shared *handshake.KeySet, exits map[string]*handshake.KeySet) error {
	fp := handshake.Fingerprint(&key.PublicKey)
	fix := "an entry pins the exits' keys only: give it a file or directory that holds the exits' public keys and no entry's " +
		"(keep the entries' keys, which the exits authorize, in a directory of their own)"
	if shared != nil && slices.Contains(shared.Fingerprints(), fp) {
		return fmt.Errorf("--peer-key %s holds this entry's own public key (%s, from --key %s): %s", s.PeerKey, fp, s.Key, fix)
	}
	for _, spec := range s.Peers {
		addr, path := config.ParsePeer(spec)
		if ks := exits[addr]; ks != nil && slices.Contains(ks.Fingerprints(), fp) {
			return fmt.Errorf("--peer %s=%s holds this entry's own public key (%s, from --key %s): %s", addr, path, fp, s.Key, fix)
		}
	}
	return nil
}

// pinnedFingerprints lists every key the entry pins, once each, in order.
func pinnedFingerprints(shared *handshake.KeySet, exits map[string]*handshake.KeySet) []string {
	var fps []string
	if shared != nil {
		fps = append(fps, shared.Fingerprints()...)
	}
	for _, ks := range exits {
		fps = append(fps, ks.Fingerprints()...)
	}
	slices.Sort(fps)
	return slices.Compact(fps)
}

// serviceList names the exit's services for the "exit ready" line:
// NAME=HOST:PORT, the default service as default.
func serviceList(s config.Exit) []string {
	var out []string
	for _, svc := range s.AllServices() {
		out = append(out, config.DisplayName(svc.Name)+"="+svc.Forward)
	}
	return out
}

// loadPrivateKey loads an agent's --key and refuses a file that group or others may access,
// unless allowInsecure, or the file is a credential that systemd passed the service
// (LoadCredential=, in $CREDENTIALS_DIRECTORY). systemd writes a credential with mode 0400 and,
// for a service that runs as another user (User=, DynamicUser=), lets that user read it through
// an ACL entry, which makes the mode show the group bits as 0440; the directory is a read-only
// mount that only the service can enter.
func loadPrivateKey(path string, allowInsecure bool) (*rsa.PrivateKey, error) {
	key, err := handshake.LoadPrivateKey(path)
	if err != nil {
		return nil, usagef("--key %v", err)
	}
	if !allowInsecure && !systemdCredential(path, os.Getenv("CREDENTIALS_DIRECTORY")) {
		if err := handshake.CheckPrivateKeyMode(path); err != nil {
			return nil, usagef("--key %v (or, where a mounted Secret sets the mode, pass --allow-insecure-key-perms; under systemd, pass the key with LoadCredential=)", err)
		}
	}
	return key, nil
}

// systemdCredential reports whether path names a file in credDir, the service's credentials
// directory (empty: not a service that has one).
func systemdCredential(path, credDir string) bool {
	if credDir == "" || !filepath.IsAbs(credDir) {
		return false
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return false
	}
	rel, err := filepath.Rel(filepath.Clean(credDir), abs)
	return err == nil && filepath.IsLocal(rel)
}

// agentProcs is how many threads an agent runs Go code on (GOMAXPROCS),
// given the environment variable GOMAXPROCS and avail, what the runtime
// chose (the CPUs this process may use, within its container's CPU limit).
// A value in the environment is the operator's and is kept. Otherwise an
// agent takes half of avail, at least one: a sidecar shares its host with
// the application it serves, each session's work is one pipeline, and on
// a 2-core machine running the application, a server and both agents
// (integration/perf) one thread per agent gave pgbench -S 0.38-0.45 of
// direct against 0.25-0.31 with two, and bulk 10-30% more throughput for
// 10-20% less CPU per byte: a second thread mostly wakes up, spins and
// hands goroutines over.
func agentProcs(env string, avail int) int {
	if env != "" {
		return avail
	}
	return max(1, avail/2)
}

// agent is what serve needs of an exit or an entry.
type agent struct {
	role       string
	listen     []config.EntryListener // the exit has one, for no service
	statusAddr string                 // empty: no status endpoint
	plaintext  bool                   // listen takes plaintext (the entry): warn if it is not loopback, log the services
	serve      func(context.Context, []tunnel.ServiceListener) error
	stats      func() tunnel.Stats
	readiness  func(context.Context) error // nil: ready for traffic
	attempted  func(context.Context) error // the entry's: waits for its first attempt to reach the exit
	reload     func(zerolog.Logger)        // re-reads the key files and logs what changed
	metrics    prometheus.Gatherer
	ready      func(*zerolog.Event) *zerolog.Event // adds the fields of the "ready" line
	sandbox    *sandbox.Policy                     // applied once every listener is bound; nil: off
	// watch are the files (or directories) whose contents are looked at every watchInterval
	// (0: never); a change reloads as SIGHUP does.
	watch         []string
	watchInterval time.Duration
}

// serve binds the agent's address and the status address (a port alone meaning loopback), or
// takes the sockets systemd passed for them (socket activation), logs "listening" for each,
// then "<role> ready" once every listener is bound, and runs the agent until e.ctx is done. If an
// address cannot be bound, nothing has started and nothing claims to be ready. Serve owns and
// closes the agent's listener; the status endpoint stops after it. Under systemd it notifies
// READY=1 once the listeners are bound and, on the entry, the first attempt to reach the exit
// has ended; RELOADING=1 and READY=1 around each reload; STOPPING=1 as the drain starts.
func serve(e *env, a agent) error {
	sd, err := activatedSockets(a.plaintext)
	if err != nil {
		return err
	}
	// systemd's listen socket serves the default service (the exit's one
	// listener); every other listener is bound here.
	var lns []tunnel.ServiceListener
	closeAll := func() {
		for _, l := range lns {
			l.Listener.Close()
		}
		if sd.status != nil {
			sd.status.Close()
		}
	}
	if sd.listen != nil {
		lns = append(lns, tunnel.ServiceListener{Listener: sd.listen})
	}
	for _, l := range a.listen {
		if sd.listen != nil && l.Service == "" {
			continue
		}
		var ln net.Listener
		if network, path := config.Network(l.Addr); network == "unix" {
			ln, err = listen.Unix(e.ctx, path, l.Mode)
		} else {
			ln, err = listen.TCP(e.ctx, l.Addr)
		}
		if err != nil {
			closeAll()
			return fmt.Errorf("--listen %s: %w", l.Addr, err)
		}
		lns = append(lns, tunnel.ServiceListener{Listener: ln, Service: l.Service})
	}
	statusLn := sd.status
	if statusLn == nil && a.statusAddr != "" {
		if statusLn, err = net.Listen("tcp", statusListenAddr(a.statusAddr)); err != nil {
			closeAll()
			return fmt.Errorf("--status-addr %s: %w", a.statusAddr, err)
		}
	}
	procs := agentProcs(os.Getenv("GOMAXPROCS"), runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(procs)
	log := e.log.With().Str("role", a.role).Logger()
	// The first line says which build runs.
	for _, l := range lns {
		ev := log.Info().Str("addr", l.Listener.Addr().String())
		if a.plaintext {
			ev = ev.Str("service", config.DisplayName(l.Service))
		}
		if sd.listen != nil && l.Listener == sd.listen {
			ev = ev.Bool("systemd_socket", true)
		}
		ev.Str("version", e.build.Version).Int("procs", procs).Msg("listening")
	}
	listen.WarnLowFileLimit(log)
	// An accept that fails for want of descriptors or memory is retried, not the end of the
	// agent; one that keeps failing for a watchdog interval makes the agent unhealthy.
	retrying := make([]*listen.Retrying, len(lns))
	for i := range lns {
		retrying[i] = listen.NewRetrying(lns[i].Listener, log)
		lns[i].Listener = retrying[i]
	}
	live := func(within time.Duration) error { return acceptHealth(retrying, time.Now(), within) }
	for _, l := range lns {
		switch {
		case isLoopback(l.Listener.Addr()):
		case a.plaintext:
			log.Warn().Str("addr", l.Listener.Addr().String()).Msg("the plaintext side is reachable from the network: " +
				"anyone who can connect to this address uses the tunnel; listen on 127.0.0.1 unless another host or container must connect")
		case isUnspecified(l.Listener.Addr()):
			// The exit: only authenticated entries get in, but every interface, the default
			// :7000, is more than most hosts mean to expose.
			log.Warn().Str("addr", l.Listener.Addr().String()).Msg("the exit listens on every interface: " +
				"any host that reaches one may try a handshake; give --listen the address entries connect to, e.g. 10.0.0.5:7000")
		}
	}
	if a.sandbox != nil {
		// Everything that needs more than the sandbox allows is done: the settings, keys and
		// listeners. Nothing has been served yet.
		r, err := sandbox.Apply(*a.sandbox)
		if err != nil {
			closeAll()
			if statusLn != nil {
				statusLn.Close()
			}
			return fmt.Errorf("sandbox: %w (or run without it: --sandbox=false)", err)
		}
		logSandbox(log, *a.sandbox, r)
	}
	if statusLn != nil {
		ev := log.Info().Str("addr", statusLn.Addr().String())
		if sd.status != nil {
			ev = ev.Bool("systemd_socket", true)
		}
		ev.Msg("status endpoint listening")
		stop := status.Serve(statusLn, log, status.Config{
			Stats:   func() any { return a.stats() },
			Metrics: a.metrics,
			// Readiness goes down as the drain starts: e.ctx ends first.
			Ready: func(ctx context.Context) error {
				if e.ctx.Err() != nil {
					return errors.New("shutting down")
				}
				return a.readiness(ctx)
			},
		})
		defer stop()
	}
	a.ready(log.Info()).Msg(a.role + " ready")
	sdn := &notifier{log: log}
	// The watchdog runs until serve returns, drain included; the wait for READY=1 ends with
	// e.ctx or when serve returns, whichever comes first.
	stopSystemd, systemdDone := make(chan struct{}), make(chan struct{})
	waitCtx, stopWaiting := context.WithCancel(e.ctx)
	defer func() { stopWaiting(); close(stopSystemd); <-systemdDone }()
	go func() {
		defer close(systemdDone)
		done := make(chan struct{})
		go func() { defer close(done); sdn.watchdog(stopSystemd, live) }()
		defer func() { <-done }()
		state := fmt.Sprintf("%s listening on %s", a.role, lns[0].Listener.Addr())
		if a.attempted != nil {
			// The entry: READY=1 once its first attempt to reach the exit has ended.
			if a.attempted(waitCtx) != nil {
				return // stopping before that
			}
			if err := a.readiness(waitCtx); err != nil {
				state += "; " + err.Error() + "; retrying"
			} else {
				state += "; session with the exit up"
			}
		}
		sdn.readyNow(state)
	}()
	// SIGHUP, and a change in a watched file, reload the keys (the ready line above may then be
	// out of date).
	stopReload, reloadDone := make(chan struct{}), make(chan struct{})
	defer func() { close(stopReload); <-reloadDone }()
	go func() {
		defer close(reloadDone)
		w := newFileWatch(a.watch, a.watchInterval)
		defer w.stop()
		for {
			select {
			case <-e.reload:
				w.reset() // what this reload reads is the new baseline
				sdn.reloading(func() { a.reload(log) })
			case <-w.tick():
				if files := w.changed(); len(files) > 0 {
					log.Info().Strs("changed", files).Msg("a watched file changed; reloading")
					sdn.reloading(func() { a.reload(log) })
				}
			case <-stopReload:
				return
			}
		}
	}()
	// The stop line and STOPPING=1 are out before this returns: a drain with nothing to wait
	// for ends at once, and the process with it.
	stopSaid := make(chan struct{})
	stop := context.AfterFunc(e.ctx, func() {
		defer close(stopSaid)
		sdn.stopping("draining open connections")
		log.Info().Msg("stop requested (a second SIGINT/SIGTERM exits at once, without draining)")
	})
	err = a.serve(e.ctx, lns)
	if !stop() {
		<-stopSaid
	}
	if err != nil {
		return err
	}
	log.Info().Msg("stopped")
	return nil
}

// acceptHealth returns an error if accepting on any of lns has failed for at least within, at
// now: the agent takes no new connection there, and a restart (which closes whatever holds the
// descriptors) may be what it takes. A peer or backend that is down is not such a reason: a
// restart does not bring it back.
func acceptHealth(lns []*listen.Retrying, now time.Time, within time.Duration) error {
	for _, l := range lns {
		if d := l.FailingFor(now); d >= within {
			return fmt.Errorf("accepting connections on %s has failed for %s (see the warning that started it)", l.Addr(), d.Round(time.Millisecond))
		}
	}
	return nil
}

// statusListenAddr is where the status endpoint listens for --status-addr addr: a port alone
// (":9070") means loopback, so that counters and /status?gc=1 stay local unless a host is named.
func statusListenAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "" {
		return addr
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// isUnspecified reports whether a is a TCP address on every interface (0.0.0.0 or ::).
func isUnspecified(a net.Addr) bool {
	t, ok := a.(*net.TCPAddr)
	return ok && t.IP.IsUnspecified()
}

// isLoopback reports whether a is a TCP address on a loopback interface,
// or a UNIX socket (which only this host reaches).
func isLoopback(a net.Addr) bool {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	return false
}

// keyDiff returns the fingerprints in after and not in before, and those in before and not in
// after.
func keyDiff(before, after []string) (added, removed []string) {
	added, removed = []string{}, []string{}
	for _, fp := range after {
		if !slices.Contains(before, fp) {
			added = append(added, fp)
		}
	}
	for _, fp := range before {
		if !slices.Contains(after, fp) {
			removed = append(removed, fp)
		}
	}
	return added, removed
}

// keyChange adds to ev the agent's own fingerprint after a reload, and the one before when the
// key changed.
func keyChange(ev *zerolog.Event, before, after *rsa.PrivateKey) *zerolog.Event {
	ev = ev.Str("fingerprint", handshake.Fingerprint(&after.PublicKey))
	if !before.PublicKey.Equal(&after.PublicKey) {
		ev = ev.Str("previous_fingerprint", handshake.Fingerprint(&before.PublicKey))
	}
	return ev
}

type demoCmd struct {
	Verbose bool `help:"Also log the agents' info messages (to stderr); without it only their warnings and errors."`
}

// Run runs demo.Run, which prints to stdout. The agents' info logs would interleave with
// the demo's display on a terminal, so they are hidden unless asked for.
func (c *demoCmd) Run(e *env) error {
	log := e.log
	if !c.Verbose && log.GetLevel() < zerolog.WarnLevel {
		log = log.Level(zerolog.WarnLevel)
	}
	return demo.Run(e.ctx, e.stdout, log)
}
