package config

// UNIX sockets: an entry may listen, and an exit forward, on a UNIX socket
// instead of a TCP address. Settings write it as unix:PATH, wherever a
// listen or forward address goes.

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
)

// UnixPrefix starts an address that is the path of a UNIX socket.
const UnixPrefix = "unix:"

// maxUnixPath is the longest socket path Linux takes (sun_path holds 108
// bytes, with the terminating NUL).
const maxUnixPath = 107

// Network returns the network and address to dial or listen on for an
// address of the settings: "unix" and PATH for unix:PATH, else "tcp" and
// addr.
func Network(addr string) (network, address string) {
	if path, ok := strings.CutPrefix(addr, UnixPrefix); ok {
		return "unix", path
	}
	return "tcp", addr
}

// IsUnix reports whether addr is unix:PATH.
func IsUnix(addr string) bool { return strings.HasPrefix(addr, UnixPrefix) }

// unixPath checks the PATH of a unix:PATH address given to flag.
func unixPath(flag, addr string) error {
	path := strings.TrimPrefix(addr, UnixPrefix)
	switch {
	case path == "":
		return fmt.Errorf("%s %q has no path: write unix:PATH, e.g. unix:/run/tunnel/db.sock", flag, addr)
	case !filepath.IsAbs(path):
		return fmt.Errorf("%s %q: give the socket's absolute path, e.g. unix:/run/tunnel/db.sock", flag, addr)
	case len(path) > maxUnixPath:
		return fmt.Errorf("%s %q: the path is %d bytes long, and a UNIX socket's path may have at most %d: choose a shorter one", flag, addr, len(path), maxUnixPath)
	}
	return nil
}

// ParseMode parses the permission bits of a socket file, in octal: "0660"
// or "660". No bits at all is refused: nobody but root could connect.
func ParseMode(s string) (fs.FileMode, error) {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 || m == 0 {
		return 0, fmt.Errorf("mode %q is not permission bits in octal: give e.g. 0660 (owner and group may connect) or 0600 (owner only)", s)
	}
	return fs.FileMode(m), nil
}

// entryListenAddr checks an entry's --listen address: host:port, or
// unix:PATH.
func entryListenAddr(addr string) error {
	if IsUnix(addr) {
		return unixPath("--listen", addr)
	}
	return listenAddr("--listen", addr)
}

// forwardAddr checks an exit's --forward backend: host:port, or unix:PATH.
// An empty address is left to the caller.
func forwardAddr(flag, addr, what string) error {
	if IsUnix(addr) {
		return unixPath(flag, addr)
	}
	return dialAddr(flag, addr, what)
}
