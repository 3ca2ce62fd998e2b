// Package sandbox restricts the running process with Landlock, so that an
// agent, once it has bound its listeners, can read only the directories
// its settings name, bind only its listen ports and connect only to its
// peers' or backends' ports and DNS. It is best effort: on a kernel
// without Landlock, or with an older version of it, the process runs with
// what that kernel can enforce (nothing at all before Linux 5.13; no
// network rules before ABI 4, Linux 6.7), and Apply says so.
//
// A restriction lasts for the life of the process, for every thread, and
// cannot be lifted: call Apply once, after everything that needs more
// (reading the settings, binding) is done.
//
// What Landlock does not cover: reading or writing files already open,
// UDP (DNS over UDP stays possible), connecting to UNIX sockets by path
// before ABI 9, and MPTCP sockets (Go listens with MPTCP where the kernel
// offers it; Landlock's TCP rules apply to IPPROTO_TCP sockets only).
package sandbox

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"syscall"

	"github.com/landlock-lsm/go-landlock/landlock"
	ll "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// Policy is what the process may still do once restricted.
type Policy struct {
	// ReadDirs are directories whose files and subdirectories may be
	// read (listed and opened for reading), now and after renames and
	// symlink swaps inside them. Missing ones are left out.
	ReadDirs []string
	// ReadFiles are single files that may be read. Missing ones are left
	// out.
	ReadFiles []string
	// SocketDirs are directories in which the process may remove the
	// UNIX socket files it listens on (Go removes them on close), and
	// read.
	SocketDirs []string
	// BindTCP and ConnectTCP are the TCP ports the process may bind and
	// connect to (any address).
	BindTCP, ConnectTCP []uint16
	// AbstractUnix lets the process connect to abstract UNIX sockets
	// made outside its sandbox (NOTIFY_SOCKET=@...); without it Landlock
	// (ABI 6) scopes them to the sandbox.
	AbstractUnix bool
}

// Result says what Apply enforced.
type Result struct {
	ABI   int  // the kernel's Landlock ABI version; 0 without Landlock
	Files bool // file system rules are enforced
	Net   bool // TCP bind and connect rules are enforced (ABI 4 and later)
	// Checked lists what Probe found denied after Apply: "read /",
	// "bind 127.0.0.1:0/tcp", "connect 127.0.0.1:N/tcp".
	Checked []string
	// Unchecked lists what Probe found allowed though it should not be.
	Unchecked []string
}

// abi is the version of the go-landlock rules used: 7 (Linux 6.15).
// A newer kernel enforces them as they are; an older one what it can.
var abi = landlock.V7

// Apply restricts the process to p, best effort, and probes the result
// (see Probe).
func Apply(p Policy) (Result, error) {
	var r Result
	v, err := ll.LandlockGetABIVersion()
	if err == nil {
		r.ABI = v
	}
	cfg := abi
	if p.AbstractUnix {
		cfg.Scoped = landlock.ScopedSet(ll.ScopeSignal)
	}
	read := landlock.AccessFSSet(ll.AccessFSReadFile | ll.AccessFSReadDir)
	rules := []landlock.Rule{
		landlock.PathAccess(read, existing(p.ReadDirs)...),
		landlock.PathAccess(landlock.AccessFSSet(ll.AccessFSReadFile), existing(p.ReadFiles)...),
		landlock.PathAccess(read|landlock.AccessFSSet(ll.AccessFSRemoveFile), existing(p.SocketDirs)...),
	}
	for _, port := range compact(p.BindTCP) {
		rules = append(rules, landlock.BindTCP(port))
	}
	for _, port := range compact(p.ConnectTCP) {
		rules = append(rules, landlock.ConnectTCP(port))
	}
	if err := cfg.BestEffort().Restrict(rules...); err != nil {
		return r, fmt.Errorf("landlock: %w", err)
	}
	r.Files = r.ABI >= 1
	r.Net = r.ABI >= 4
	r.Checked, r.Unchecked = Probe(p, r)
	return r, nil
}

// Probe tries, after Apply, what the policy forbids and the kernel
// enforces: listing "/" (unless p lets it be read), binding a TCP port
// p does not name (port 0 on 127.0.0.1) and connecting to a port it
// does not name on 127.0.0.1 (refused at once by Landlock, before any
// packet). It returns what was denied and what was not.
func Probe(p Policy, r Result) (denied, allowed []string) {
	check := func(what string, err error) {
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			denied = append(denied, what)
		} else {
			allowed = append(allowed, what)
		}
	}
	if r.Files && !slices.Contains(p.ReadDirs, "/") {
		f, err := os.Open("/")
		if err == nil {
			f.Close()
		}
		check("read /", err)
	}
	if r.Net && !slices.Contains(p.BindTCP, 0) {
		check("bind 127.0.0.1:0/tcp", tcp(func(fd int) error {
			return unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
		}))
	}
	if r.Net {
		port := uint16(9) // discard
		for slices.Contains(p.ConnectTCP, port) {
			port++
		}
		check(fmt.Sprintf("connect %s/tcp", netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)), tcp(func(fd int) error {
			err := unix.Connect(fd, &unix.SockaddrInet4{Port: int(port), Addr: [4]byte{127, 0, 0, 1}})
			if errors.Is(err, unix.EINPROGRESS) {
				return nil
			}
			return err
		}))
	}
	return denied, allowed
}

// tcp runs f on a fresh non-blocking IPv4 TCP socket (IPPROTO_TCP, as
// Landlock rules apply to) and closes it.
func tcp(f func(fd int) error) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return f(fd)
}

// existing returns the paths that exist, once each: Landlock takes a rule
// only on a path it can open.
func existing(paths []string) []string {
	var out []string
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// compact returns ports sorted, once each.
func compact(ports []uint16) []uint16 {
	out := slices.Clone(ports)
	slices.Sort(out)
	return slices.Compact(out)
}
