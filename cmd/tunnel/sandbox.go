package main

// The agents' sandbox: once an agent has loaded its settings and keys and
// bound its listeners, serve restricts it with Landlock (tunnel/sandbox)
// to what it still needs:
//
//   - read: the directories of the key files and of the --config file
//     (the parent directory of a file, the directory itself when a
//     setting names one), so that a reload reads them again after an
//     atomic rename or a Kubernetes Secret's ..data symlink swap, and the
//     directories that their symlinks point to at start; the files the
//     Go resolver reads (/etc/resolv.conf, /etc/hosts, ...); the agent's
//     own /proc entries (open files in /status, process metrics);
//   - the directories of the entry's UNIX sockets, to remove them when it
//     stops;
//   - bind: the TCP ports of its listeners and status endpoint;
//   - connect: the TCP ports of the exits (entry) or backends (exit),
//     and 53 for DNS over TCP.
//
// --sandbox=false (sandbox: false in the file, TUNNEL_SANDBOX=false)
// turns it off.

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/config"
	"github.com/tunnel-dev/tunnel/tunnel/sandbox"
)

// sandboxHelp is the --sandbox flag's help, the same for both agents.
const sandboxHelp = "On by default: restrict the agent with Landlock once it listens: read only the directories of its key and config files, bind only its listen ports, connect only to its peers' or backends' ports and DNS. Best effort: a kernel without Landlock runs it unrestricted. --sandbox=false turns it off."

// resolverFiles are what the Go resolver reads for a name lookup.
var resolverFiles = []string{"/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf", "/etc/services", "/etc/localtime"}

// sandboxPolicy is the policy common to both agents: keys are the key settings (files or
// directories), configFile the --config file ("" if none), listen and status the addresses
// bound, connect the TCP addresses the agent dials.
func sandboxPolicy(keys []string, configFile string, listen []string, status string, connect []string) sandbox.Policy {
	var p sandbox.Policy
	addDir := func(path string) {
		if path == "" {
			return
		}
		abs, err := filepath.Abs(path)
		if err != nil {
			return
		}
		dir := abs
		if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
			dir = filepath.Dir(abs)
		}
		p.ReadDirs = append(p.ReadDirs, dir)
		// A link to elsewhere, as it is at start (a Secret's files point
		// into ..data, inside the same directory).
		if real, err := filepath.EvalSymlinks(abs); err == nil && real != abs {
			if fi, err := os.Stat(real); err == nil && !fi.IsDir() {
				real = filepath.Dir(real)
			}
			if !strings.HasPrefix(real+"/", dir+"/") {
				p.ReadDirs = append(p.ReadDirs, real)
			}
		}
	}
	for _, k := range keys {
		addDir(k)
	}
	addDir(configFile)
	for _, f := range resolverFiles {
		p.ReadFiles = append(p.ReadFiles, f)
		// /etc/resolv.conf is often a link that its manager replaces by a
		// rename: read its directory, unless that is /etc itself.
		if real, err := filepath.EvalSymlinks(f); err == nil && real != f {
			if d := filepath.Dir(real); d != "/etc" && d != "/" {
				p.ReadDirs = append(p.ReadDirs, d)
			}
		}
	}
	if self, err := filepath.EvalSymlinks("/proc/self"); err == nil {
		p.ReadDirs = append(p.ReadDirs, self)
	}
	for _, a := range append(listen, status) {
		if network, path := config.Network(a); network == "unix" {
			p.SocketDirs = append(p.SocketDirs, filepath.Dir(path))
		} else if port, ok := tcpPort(a); ok && port != 0 {
			p.BindTCP = append(p.BindTCP, port)
		}
	}
	p.ConnectTCP = []uint16{53}
	for _, a := range connect {
		if port, ok := tcpPort(a); ok {
			p.ConnectTCP = append(p.ConnectTCP, port)
		}
	}
	p.AbstractUnix = strings.HasPrefix(os.Getenv("NOTIFY_SOCKET"), "@")
	for _, l := range []*[]string{&p.ReadDirs, &p.SocketDirs} {
		slices.Sort(*l)
		*l = slices.Compact(*l)
	}
	return p
}

// tcpPort is the port of a HOST:PORT address.
func tcpPort(addr string) (uint16, bool) {
	if config.IsUnix(addr) || addr == "" {
		return 0, false
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	return uint16(n), err == nil
}

// exitSandbox is the exit's policy.
func exitSandbox(s config.Exit, configFile string) sandbox.Policy {
	var backends []string
	for _, svc := range s.AllServices() {
		backends = append(backends, svc.Forward)
	}
	return sandboxPolicy([]string{s.Key, s.AuthorizedKeys}, configFile, []string{s.Listen}, s.StatusAddr, backends)
}

// entrySandbox is the entry's policy.
func entrySandbox(s config.Entry, configFile string) sandbox.Policy {
	keys := []string{s.Key, s.PeerKey}
	var peers, listen []string
	for _, spec := range s.Peers {
		addr, path := config.ParsePeer(spec)
		peers = append(peers, addr)
		keys = append(keys, path)
	}
	for _, l := range s.AllListeners() {
		listen = append(listen, l.Addr)
	}
	return sandboxPolicy(keys, configFile, listen, s.StatusAddr, peers)
}

// logSandbox says what the sandbox enforces, on one line; a probe that was not denied is a
// warning.
func logSandbox(log zerolog.Logger, p sandbox.Policy, r sandbox.Result) {
	ev := log.Info()
	if len(r.Unchecked) > 0 || !r.Files {
		ev = log.Warn()
	}
	ports := func(ps []uint16) []int {
		out := []int{}
		for _, p := range ps {
			out = append(out, int(p))
		}
		return out
	}
	ev = ev.Int("landlock_abi", r.ABI).Bool("files", r.Files).Bool("net", r.Net).
		Strs("read", append(append([]string{}, p.ReadDirs...), p.SocketDirs...)).
		Ints("bind", ports(p.BindTCP)).Ints("connect", ports(p.ConnectTCP)).
		Strs("denied", nonNil(r.Checked))
	switch {
	case !r.Files:
		ev.Msg("sandbox unavailable: this kernel has no Landlock; the agent runs unrestricted")
	case len(r.Unchecked) > 0:
		ev.Strs("not_denied", r.Unchecked).Msg("sandbox on, but the kernel let through what it should deny")
	case !r.Net:
		ev.Msg("sandbox on for files; this kernel's Landlock has no network rules (ABI 4, Linux 6.7)")
	default:
		ev.Msg("sandbox on")
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
