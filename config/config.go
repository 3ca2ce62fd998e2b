// Package config holds the settings of the two tunnel agents, their defaults and their
// validation. It loads no keys: key fields are paths, whose contents the handshake package
// checks when it loads them.
//
// Validation errors name the field as its command-line flag (e.g. "--forward") and say how to
// fix it, so the command can print them to the user as they are.
package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Window bounds: yamux needs at least its initial 256 KiB window, and a window must fit the
// signed 32-bit arithmetic peers use.
const (
	MinWindow = 256 << 10
	MaxWindow = 1 << 31
)

// Exit holds the exit agent's settings (no loaded keys: paths only).
type Exit struct {
	Listen           string        // address to accept entry agents on, default ":7000"
	Forward          string        // the default service's backend, host:port or unix:PATH; required unless Services names some
	Key              string        // required, path of the exit's private key
	AuthorizedKeys   string        // required, file of PUBLIC KEY PEM blocks, or a directory of them
	DialTimeout      time.Duration // backend dial timeout, default 5s
	HandshakeTimeout time.Duration // default 10s
	MaxHandshakes    int           // handshakes in progress at once, default 64
	MaxStreams       int           // concurrent streams per session, default 4096
	KeepAlive        time.Duration // yamux keepalive interval, default 15s
	Window           uint32        // yamux max stream window, default 1 MiB
	DrainTimeout     time.Duration // how long open streams may finish on shutdown, default 30s
	HandshakeRate    float64       // new handshakes per second allowed from one source IP, default 10
	StatusAddr       string        // optional address of the status endpoint; a port alone (":9070") means loopback
	// AllowInsecureKeyPerms accepts a Key file that group or others may access, for containers
	// where a mounted Secret decides the mode (the command checks the mode when it loads Key).
	AllowInsecureKeyPerms bool
	// RequireSignedHello refuses entries that speak handshake version 1, whose hello is not
	// signed (handshake/PROTOCOL-v2.md): then no forged hello costs the exit a slot or RSA work.
	RequireSignedHello bool
	// ResumeWindow is how long a session whose connection broke is kept for the entry to resume
	// it (handshake/PROTOCOL-v2.md section 6), default 60s; 0 turns resumption off.
	ResumeWindow time.Duration
	// Services are the named services, each with its backend (services.go).
	Services []ExitService
	// Access restricts services to some authorized keys; a service no rule names admits every key.
	// A rule with no keys is refused, not read as "no rule" (an empty allow: list in a file).
	Access []Access
	// ProxyProtocol names the services (DefaultService for the default one) whose backend
	// connections start with a PROXY protocol v2 header.
	ProxyProtocol []string
}

// Entry holds the entry agent's settings (no loaded keys: paths only).
type Entry struct {
	Listen           string        // address to accept apps on for the default service, host:port or unix:PATH, default "127.0.0.1:5000" (plaintext: loopback unless told otherwise); "" when only Listeners are given
	ListenMode       fs.FileMode   // permission bits of the socket files of unix:PATH listeners that set none of their own; 0: what the umask leaves
	Peers            []string      // required, the exits: host:port, or host:port=keys for an exit with its own pinned keys (see ParsePeer)
	Key              string        // required, path of the entry's private key
	PeerKey          string        // the exits' public keys (pinned): a file of PUBLIC KEY blocks, or a directory of them; required unless every peer has its own
	DialTimeout      time.Duration // dial timeout to the exit, default 5s
	HandshakeTimeout time.Duration // default 10s
	KeepAlive        time.Duration // yamux keepalive interval, default 15s
	Window           uint32        // yamux max stream window, default 1 MiB
	DrainTimeout     time.Duration // how long open streams may finish on shutdown, default 30s
	StatusAddr       string        // optional address of the status endpoint; a port alone (":9070") means loopback
	ResumeWindow     time.Duration // how long a session whose connection broke tries to resume, default 60s; 0: off
	// AllowInsecureKeyPerms accepts a Key file that group or others may access, for containers
	// where a mounted Secret decides the mode (the command checks the mode when it loads Key).
	AllowInsecureKeyPerms bool
	// Listeners are addresses to accept apps on for named services (services.go).
	Listeners []EntryListener
}

// Defaults shared by both agents.
const (
	DefaultDialTimeout      = 5 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultKeepAlive        = 15 * time.Second
	DefaultWindow           = 1 << 20
	DefaultDrainTimeout     = 30 * time.Second
	DefaultMaxHandshakes    = 64
	DefaultMaxStreams       = 4096
	DefaultHandshakeRate    = 10.0
	DefaultResumeWindow     = 60 * time.Second
	MaxResumeWindow         = time.Hour
	DefaultExitListen       = ":7000"
	DefaultEntryListen      = "127.0.0.1:5000"
)

// DefaultExit returns the exit settings with every optional field at its default; the required
// fields (Forward, Key, AuthorizedKeys) are empty.
func DefaultExit() Exit {
	return Exit{
		Listen:           DefaultExitListen,
		DialTimeout:      DefaultDialTimeout,
		HandshakeTimeout: DefaultHandshakeTimeout,
		MaxHandshakes:    DefaultMaxHandshakes,
		MaxStreams:       DefaultMaxStreams,
		KeepAlive:        DefaultKeepAlive,
		Window:           DefaultWindow,
		DrainTimeout:     DefaultDrainTimeout,
		HandshakeRate:    DefaultHandshakeRate,
		ResumeWindow:     DefaultResumeWindow,
	}
}

// DefaultEntry returns the entry settings with every optional field at its default; the required
// fields (Peers, Key, PeerKey) are empty.
func DefaultEntry() Entry {
	return Entry{
		Listen:           DefaultEntryListen,
		DialTimeout:      DefaultDialTimeout,
		HandshakeTimeout: DefaultHandshakeTimeout,
		KeepAlive:        DefaultKeepAlive,
		Window:           DefaultWindow,
		DrainTimeout:     DefaultDrainTimeout,
		ResumeWindow:     DefaultResumeWindow,
	}
}

// Validate returns the first problem found in c, or nil. It checks that the key paths exist and
// are readable, not what they contain.
func (c Exit) Validate() error {
	checks := []error{
		exitListenAddr(c.Listen),
		c.validateServices(),
		required("--key", c.Key, "give the exit's private key file made by tunnel keygen"),
		readableFile("--key", c.Key),
		required("--authorized-keys", c.AuthorizedKeys, "give a file of the entries' public keys (PUBLIC KEY PEM blocks) or a directory of .pub files"),
		readablePath("--authorized-keys", c.AuthorizedKeys),
		positiveDuration("--dial-timeout", c.DialTimeout),
		positiveDuration("--handshake-timeout", c.HandshakeTimeout),
		positiveInt("--max-handshakes", c.MaxHandshakes),
		positiveInt("--max-streams", c.MaxStreams),
		positiveDuration("--keepalive", c.KeepAlive),
		window(c.Window),
		positiveDuration("--drain-timeout", c.DrainTimeout),
		positiveRate("--handshake-rate", c.HandshakeRate),
		resumeWindow(c.ResumeWindow),
		optionalListenAddr("--status-addr", c.StatusAddr),
	}
	return first(checks)
}

// Validate returns the first problem found in c, or nil. It checks that the key paths exist and
// are readable, not what they contain.
func (c Entry) Validate() error {
	checks := []error{
		c.validateListeners(),
		peers(c.Peers, c.PeerKey),
		required("--key", c.Key, "give the entry's private key file made by tunnel keygen"),
		readableFile("--key", c.Key),
		readablePath("--peer-key", c.PeerKey),
		positiveDuration("--dial-timeout", c.DialTimeout),
		positiveDuration("--handshake-timeout", c.HandshakeTimeout),
		positiveDuration("--keepalive", c.KeepAlive),
		window(c.Window),
		positiveDuration("--drain-timeout", c.DrainTimeout),
		resumeWindow(c.ResumeWindow),
		optionalListenAddr("--status-addr", c.StatusAddr),
	}
	return first(checks)
}

// ParsePeer splits a --peer value, HOST:PORT or HOST:PORT=KEYS, into the exit's address and the
// path of its own pinned keys (empty: the exit may present any key of --peer-key).
func ParsePeer(spec string) (addr, keys string) {
	addr, keys, _ = strings.Cut(spec, "=")
	return addr, keys
}

// peers checks the --peer values, and that every exit has keys to pin: its own, or --peer-key.
func peers(specs []string, peerKey string) error {
	if len(specs) == 0 {
		return errors.New("--peer is required: give the exit agent's host:port, e.g. --peer exit.example.com:7000 (repeat it for several exits)")
	}
	seen := map[string]bool{}
	for _, spec := range specs {
		addr, keys := ParsePeer(spec)
		if addr == "" {
			return fmt.Errorf("--peer %q has no address: give HOST:PORT or HOST:PORT=KEYS", spec)
		}
		if err := dialAddr("--peer", addr, "the exit agent"); err != nil {
			return err
		}
		if seen[addr] {
			return fmt.Errorf("--peer %s is given twice: give each exit once", addr)
		}
		seen[addr] = true
		if strings.Contains(spec, "=") && keys == "" {
			return fmt.Errorf("--peer %q names no key file after '=': give the exit's public keys, e.g. --peer %s=exit.pub, or leave out '=' to pin --peer-key", spec, addr)
		}
		if keys == "" && peerKey == "" {
			return fmt.Errorf("--peer-key is required: give the exit's public key file (.pub) to pin, or give %s its own as --peer %s=exit.pub", addr, addr)
		}
		if err := readablePath("--peer "+addr+"=", keys); err != nil {
			return err
		}
	}
	return nil
}

func first(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func required(flag, v, fix string) error {
	if v == "" {
		return fmt.Errorf("%s is required: %s", flag, fix)
	}
	return nil
}

// listenAddr accepts host:port with an empty host (all interfaces) and port 0 (any free port).
// A host must be an IP address or a name that resolves now (it is looked up): an address to
// listen on is this host's own, and one that does not resolve could never be bound.
func listenAddr(flag, addr string) error {
	if addr == "" {
		return fmt.Errorf("%s is required: give host:port or :port to listen on, e.g. %s :7000", flag, flag)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q is not host:port: write it as :PORT or HOST:PORT, e.g. 127.0.0.1:5000", flag, addr)
	}
	if _, err := parsePort(port, 0); err != nil {
		return fmt.Errorf("%s %q: %v", flag, addr, err)
	}
	if host != "" && net.ParseIP(host) == nil {
		if _, err := net.LookupHost(host); err != nil {
			return fmt.Errorf("%s %q: %q is neither an IP address nor a name that resolves: give an address of this host, e.g. 127.0.0.1:%s, or :%s for all of them", flag, addr, host, port, port)
		}
	}
	return nil
}

// exitListenAddr checks the exit's --listen: entry agents connect over TCP.
func exitListenAddr(addr string) error {
	if IsUnix(addr) {
		return fmt.Errorf("--listen %q: the exit accepts entry agents over TCP only: give HOST:PORT or :PORT, e.g. :7000", addr)
	}
	return listenAddr("--listen", addr)
}

// dialAddr needs a host and a port in 1..65535. An empty address is left to required.
func dialAddr(flag, addr, what string) error {
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q is not host:port: give %s's address as HOST:PORT, e.g. 10.0.0.2:7000", flag, addr, what)
	}
	if host == "" {
		return fmt.Errorf("%s %q has no host: give %s's address as HOST:PORT, e.g. 127.0.0.1%s", flag, addr, what, addr)
	}
	if _, err := parsePort(port, 1); err != nil {
		return fmt.Errorf("%s %q: %v", flag, addr, err)
	}
	return nil
}

func parsePort(s string, lowest int) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < lowest || p > 65535 {
		return 0, fmt.Errorf("port %q is not a number in %d..65535", s, lowest)
	}
	return p, nil
}

// readableFile checks that path is a regular file that can be opened for reading. An empty path
// is left to required.
func readableFile(flag, path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s %s: %v", flag, path, cause(err))
	}
	if fi.IsDir() {
		return fmt.Errorf("%s %s is a directory: give the key file itself", flag, path)
	}
	return openable(flag, path)
}

// readablePath checks that path is a readable file or a listable directory.
func readablePath(flag, path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s %s: %v", flag, path, cause(err))
	}
	if fi.IsDir() {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("%s %s: %v", flag, path, cause(err))
		}
		defer f.Close()
		if _, err := f.ReadDir(1); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("%s %s: cannot list the directory: %v", flag, path, cause(err))
		}
		return nil
	}
	return openable(flag, path)
}

func openable(flag, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s %s: %v", flag, path, cause(err))
	}
	f.Close()
	return nil
}

// cause strips the *PathError wrapping (whose text repeats the path) and adds the fix for the
// common cases.
func cause(err error) string {
	switch {
	case os.IsNotExist(err):
		return "no such file; check the path (tunnel keygen --out NAME makes NAME.key and NAME.pub)"
	case os.IsPermission(err):
		return "permission denied; make it readable by the user running tunnel"
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func positiveDuration(flag string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("%s %v must be greater than zero: give a Go duration such as 5s or 500ms", flag, d)
	}
	return nil
}

func positiveRate(flag string, r float64) error {
	if !(r > 0) {
		return fmt.Errorf("%s %v must be greater than zero (handshakes per second from one source)", flag, r)
	}
	return nil
}

// optionalListenAddr checks addr as listenAddr does, when it is set.
func optionalListenAddr(flag, addr string) error {
	if addr == "" {
		return nil
	}
	return listenAddr(flag, addr)
}

func positiveInt(flag string, n int) error {
	if n <= 0 {
		return fmt.Errorf("%s %d must be greater than zero", flag, n)
	}
	return nil
}

func window(w uint32) error {
	if w < MinWindow || uint64(w) > MaxWindow {
		return fmt.Errorf("--window %d is out of range: give bytes from %d (256 KiB) to %d (2 GiB), e.g. 1048576", w, MinWindow, uint64(MaxWindow))
	}
	return nil
}

// resumeWindow checks --resume-window: 0 (off) up to MaxResumeWindow.
func resumeWindow(d time.Duration) error {
	if d < 0 || d > MaxResumeWindow {
		return fmt.Errorf("--resume-window %v must be between 0 (resumption off) and %v: give a Go duration such as 60s", d, MaxResumeWindow)
	}
	return nil
}
