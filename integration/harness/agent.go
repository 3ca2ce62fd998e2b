package harness

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"
)

// Identity is one agent's key pair, made by "tunnel keygen".
type Identity struct {
	Key, Pub    string // paths of the private key (mode 0600) and of the public key
	Fingerprint string // "SHA256:...", as keygen printed it
}

// NewIdentity makes a key pair named name in a temporary directory of t.
func NewIdentity(t testing.TB, bin, name string) Identity {
	t.Helper()
	key, pub, fp := Keygen(t, bin, t.TempDir(), name)
	return Identity{Key: key, Pub: pub, Fingerprint: fp}
}

// Rig is what an end-to-end test starts agents with: the binary and an
// entry and an exit identity that trust each other (the exit authorizes
// Entry.Pub, the entry pins Exit.Pub). It is a plain value, read only by
// its methods, so tests running in parallel may share one; to start an
// agent that trusts another key, copy the Rig and change an identity.
type Rig struct {
	Bin         string
	Entry, Exit Identity
}

// NewRig builds the binary (see Build) and makes both identities.
func NewRig(t testing.TB) *Rig {
	t.Helper()
	bin := Build(t)
	r := &Rig{Bin: bin, Entry: NewIdentity(t, bin, "entry"), Exit: NewIdentity(t, bin, "exit")}
	if r.Entry.Fingerprint == r.Exit.Fingerprint {
		t.Fatalf("keygen made two keys with the same fingerprint %s", r.Entry.Fingerprint)
	}
	return r
}

// Options vary how StartExit and StartEntry run an agent. The zero value
// runs the binary itself on 127.0.0.1:0 and waits for its "listening" line.
type Options struct {
	// Listen is --listen; "" means 127.0.0.1:0 (a free port).
	Listen string
	// Args are more flags, after those the rig sets (--listen,
	// --forward or --peer, the keys, and those of Status and Quiet).
	Args []string
	// Env is added to the process's environment ("KEY=value").
	Env []string
	// Prefix is a command that runs the binary, such as
	// {"taskset", "-c", "0"}, {"ip", "netns", "exec", "ns1"} or
	// {"prlimit", "--nofile=64"}. It must exec the binary, so that the
	// process id is the agent's.
	Prefix []string
	// Status serves the status endpoint (--status-addr) on a free port of
	// 127.0.0.1 and sets Agent.StatusAddr.
	Status bool
	// Quiet runs the agent at --log-level warn, for loads where a line per
	// connection would cost the agent time and the test memory. Without
	// its "listening" line, the ports (listen, unless Listen is set, and
	// status) are picked here, the status endpoint is on, and the start
	// waits until /readyz answers 200: for an entry, until its session is
	// up; for an exit, until its backend accepts connections. An agent
	// that exits at start (a port taken meanwhile) is started again on
	// other ports, up to three times.
	Quiet bool
	// NoErrors fails the test, when it ends, if the agent logged a line at
	// level error (see Proc.CheckNoErrors).
	NoErrors bool
}

// Agent is a running entry or exit started by a Rig.
type Agent struct {
	*Proc
	Role       string // "entry" or "exit"
	Addr       string // the address it accepts on: an entry's applications, an exit's entries
	StatusAddr string // the status endpoint's address; "" unless Options.Status or Quiet
	http       *http.Client
}

// StartExit starts an exit forwarding to forward that authorizes the rig's
// entry identity, and waits until it listens.
func (r *Rig) StartExit(t testing.TB, forward string, o Options) *Agent {
	t.Helper()
	return r.start(t, "exit", o, "--forward", forward, "--key", r.Exit.Key, "--authorized-keys", r.Entry.Pub)
}

// StartEntry starts an entry dialing peer that pins the rig's exit
// identity, and waits until it listens (not for its session: see
// StartTunnel and Proc.WaitMessage).
func (r *Rig) StartEntry(t testing.TB, peer string, o Options) *Agent {
	t.Helper()
	return r.start(t, "entry", o, "--peer", peer, "--key", r.Entry.Key, "--peer-key", r.Exit.Pub)
}

// Tunnel is a running exit and an entry dialing it. Applications connect
// to Entry.Addr.
type Tunnel struct {
	Exit, Entry *Agent
}

// StartTunnel starts an exit forwarding to backend, with options exit, and
// an entry dialing it, with options entry, and waits until the entry has
// its session.
func (r *Rig) StartTunnel(t testing.TB, backend string, exit, entry Options) *Tunnel {
	t.Helper()
	tun := &Tunnel{Exit: r.StartExit(t, backend, exit)}
	tun.Entry = r.StartEntry(t, tun.Exit.Addr, entry)
	if !entry.Quiet { // a quiet entry was ready: it has its session
		tun.Entry.WaitMessage(t, 1, 30*time.Second, "session established")
	}
	return tun
}

// CheckNoErrors is Proc.CheckNoErrors for both agents.
func (tun *Tunnel) CheckNoErrors(t testing.TB) {
	t.Helper()
	tun.Entry.CheckNoErrors(t)
	tun.Exit.CheckNoErrors(t)
}

// start runs role with the rig's flags for it (roleArgs) and o.
func (r *Rig) start(t testing.TB, role string, o Options, roleArgs ...string) *Agent {
	t.Helper()
	a := &Agent{Role: role,
		// No keep-alive: an idle status connection would hold a goroutine
		// and a descriptor in the agent between requests, in the figures
		// that tests read.
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	argv := func(listen string, more ...string) []string {
		argv := append(slices.Clone(o.Prefix), r.Bin, role, "--listen", listen)
		argv = append(append(argv, roleArgs...), more...)
		return append(argv, o.Args...)
	}
	if o.Quiet {
		return a.startQuiet(t, o, argv)
	}
	listen := o.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	var more []string
	if o.Status {
		more = []string{"--status-addr", "127.0.0.1:0"}
	}
	a.Proc = startNamed(t, "tunnel "+role, o.Env, argv(listen, more...))
	a.checkNoErrorsAtEnd(t, o)
	l := a.WaitMessage(t, 1, 30*time.Second, "listening")
	if a.Addr = l.String("addr"); a.Addr == "" {
		t.Fatalf("%s: listening line without an addr field: %s", a.name, l.Raw)
	}
	if got := l.String("role"); got != role {
		t.Errorf("%s: listening line has role %q, want %q: %s", a.name, got, role, l.Raw)
	}
	if o.Status {
		l := a.WaitMessage(t, 1, 30*time.Second, "status endpoint listening")
		if a.StatusAddr = l.String("addr"); a.StatusAddr == "" {
			t.Fatalf("%s: status endpoint line without an addr field: %s", a.name, l.Raw)
		}
	}
	return a
}

// startQuiet is start for Options.Quiet.
func (a *Agent) startQuiet(t testing.TB, o Options, argv func(listen string, more ...string) []string) *Agent {
	t.Helper()
	free := func() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePort(t))) }
	for attempt := 1; ; attempt++ {
		a.Addr, a.StatusAddr = o.Listen, free()
		if a.Addr == "" {
			a.Addr = free()
		}
		a.Proc = startNamed(t, "tunnel "+a.Role, o.Env, argv(a.Addr, "--status-addr", a.StatusAddr, "--log-level", "warn"))
		deadline := time.Now().Add(30 * time.Second)
		for !a.Exited() && time.Now().Before(deadline) {
			if _, err := a.Get("/readyz"); err == nil {
				a.checkNoErrorsAtEnd(t, o)
				return a
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !a.Exited() || attempt == 3 {
			t.Fatalf("%s not ready on %s within 30s (attempt %d); stderr:\n%s", a.name, a.StatusAddr, attempt, a.LogText())
		}
		t.Logf("%s exited at start (attempt %d; ports %s and %s taken?); retrying:\n%s",
			a.name, attempt, a.Addr, a.StatusAddr, a.LogText())
	}
}

// checkNoErrorsAtEnd registers Options.NoErrors's check with t.Cleanup.
func (a *Agent) checkNoErrorsAtEnd(t testing.TB, o Options) {
	if o.NoErrors {
		t.Cleanup(func() { a.CheckNoErrors(t) })
	}
}

// Get fetches path, such as "/status?gc=1", from the agent's status
// endpoint and returns the body of a 200 answer; any other answer is an
// error that shows its status and body.
func (a *Agent) Get(path string) ([]byte, error) {
	if a.StatusAddr == "" {
		return nil, fmt.Errorf("%s: GET %s: the agent has no status endpoint (start it with Options.Status)", a.name, path)
	}
	resp, err := a.http.Get("http://" + a.StatusAddr + path)
	if err != nil {
		return nil, fmt.Errorf("%s: GET %s: %w", a.name, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s: GET %s: reading the body: %w", a.name, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("%s: GET %s: %s: %s", a.name, path, resp.Status, body)
	}
	return body, nil
}
