package config

// Named services (PROTOCOL.md section 4): the exit forwards each service
// name to its own backend, the entry listens once per service, and the
// exit's access rules say which authorized keys may reach which services.
//
// The protocol's default service is the empty name. Settings call it
// DefaultService ("default") wherever a name must be written, such as
// "--allow default=app1"; an unnamed --forward or --listen is the default
// service, and "default=" names it explicitly.

import (
	"fmt"
	"io/fs"
	"net"
	"slices"
	"strings"
)

// DefaultService is how settings, logs, /status and metrics name the
// protocol's default service (the empty name on the wire).
const DefaultService = "default"

// maxServiceName bounds a service name; the wire allows 255 bytes.
const maxServiceName = 64

// ExitService is one named backend of the exit.
type ExitService struct {
	Name    string // a service name (ValidServiceName); never DefaultService: that one is Exit.Forward
	Forward string // the backend: host:port, or unix:PATH
}

// Access restricts a service to some authorized keys.
type Access struct {
	Service string   // a service of the exit; DefaultService for the default one
	Keys    []string // fingerprints ("SHA256:...") or key file names (app1 for app1.pub)
}

// EntryListener is one address on which the entry accepts applications for
// a named service.
type EntryListener struct {
	Addr    string // host:port or unix:PATH to listen on
	Service string // the exit's service name (ValidServiceName), or "" for its default service
	// Mode is the permission bits of the socket file of a unix:PATH
	// listener (0: Entry.ListenMode); not for a TCP listener.
	Mode fs.FileMode
}

// ValidServiceName returns nil if name can name a service: 1 to 64
// letters, digits, '.', '_' or '-', starting with a letter or a digit.
func ValidServiceName(name string) error {
	if name == "" || len(name) > maxServiceName {
		return fmt.Errorf("service name %q must be 1 to %d characters long", name, maxServiceName)
	}
	for i, c := range []byte(name) {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return fmt.Errorf("service name %q: use letters, digits, '.', '_' and '-', starting with a letter or digit, e.g. db or cache-1", name)
		}
	}
	return nil
}

// ParseForward splits an exit's --forward value, "HOST:PORT" (the default
// service) or "NAME=HOST:PORT". DefaultService as NAME means the default
// service, returned as "".
func ParseForward(v string) (name, addr string, err error) {
	name, addr, ok := strings.Cut(v, "=")
	if !ok {
		return "", v, nil
	}
	if err := ValidServiceName(name); err != nil {
		return "", "", fmt.Errorf("--forward %q: %v", v, err)
	}
	if addr == "" {
		return "", "", fmt.Errorf("--forward %q has no backend after '=': write NAME=HOST:PORT, e.g. db=db:5432", v)
	}
	if name == DefaultService {
		name = ""
	}
	return name, addr, nil
}

// ParseListen splits an entry's --listen value, "HOST:PORT" (the default
// service) or "HOST:PORT=NAME". DefaultService as NAME means the default
// service, returned as "".
func ParseListen(v string) (addr, name string, err error) {
	i := strings.LastIndexByte(v, '=')
	if i < 0 {
		return v, "", nil
	}
	addr, name = v[:i], v[i+1:]
	if err := ValidServiceName(name); err != nil {
		return "", "", fmt.Errorf("--listen %q: %v", v, err)
	}
	if addr == "" {
		return "", "", fmt.Errorf("--listen %q has no address before '=': write HOST:PORT=NAME, e.g. 127.0.0.1:5432=db", v)
	}
	if name == DefaultService {
		name = ""
	}
	return addr, name, nil
}

// ParseAllow parses an exit's --allow value, "SERVICE=KEY[,KEY...]": the
// service is restricted to those keys, each a fingerprint ("SHA256:...") or
// the name of a key file in --authorized-keys without its extension.
func ParseAllow(v string) (Access, error) {
	svc, list, ok := strings.Cut(v, "=")
	if !ok || list == "" {
		return Access{}, fmt.Errorf("--allow %q: write SERVICE=KEY[,KEY...], where a KEY is a fingerprint (SHA256:...) or the name of a key file in --authorized-keys (app1 for app1.pub), e.g. --allow db=app1", v)
	}
	a := Access{Service: svc}
	for k := range strings.SplitSeq(list, ",") {
		a.Keys = append(a.Keys, strings.TrimSpace(k))
	}
	return a, nil
}

// Services lists the exit's services: the default one first (Name "")
// when Forward is set, then the named ones in the order given.
func (c Exit) AllServices() []ExitService {
	var out []ExitService
	if c.Forward != "" {
		out = append(out, ExitService{Forward: c.Forward})
	}
	return append(out, c.Services...)
}

// AllListeners lists the entry's listeners: the default service's first
// (Service "") when Listen is set, then the named ones in the order given.
// A UNIX socket listener without a Mode of its own has ListenMode.
func (c Entry) AllListeners() []EntryListener {
	var out []EntryListener
	if c.Listen != "" {
		out = append(out, EntryListener{Addr: c.Listen})
	}
	out = append(out, c.Listeners...)
	for i := range out {
		if IsUnix(out[i].Addr) && out[i].Mode == 0 {
			out[i].Mode = c.ListenMode
		}
	}
	return out
}

// DisplayName is how settings and logs write a service name: the default
// service ("") as DefaultService.
func DisplayName(service string) string {
	if service == "" {
		return DefaultService
	}
	return service
}

// validateServices checks the exit's services and access rules.
func (c Exit) validateServices() error {
	if c.Forward == "" && len(c.Services) == 0 {
		return fmt.Errorf("--forward is required: give the backend's host:port, e.g. --forward 127.0.0.1:8080, or name services with --forward db=db:5432 --forward cache=redis:6379")
	}
	if err := forwardAddr("--forward", c.Forward, "the backend"); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, s := range c.Services {
		flag := "--forward " + s.Name + "=" + s.Forward
		if err := ValidServiceName(s.Name); err != nil {
			return fmt.Errorf("%s: %v", flag, err)
		}
		if s.Name == DefaultService {
			return fmt.Errorf("%s: %q is the default service: give it as --forward %s without a name", flag, DefaultService, s.Forward)
		}
		if seen[s.Name] {
			return fmt.Errorf("service %q is forwarded twice: give each service one --forward (or one entry under services:), and rename or remove the other", s.Name)
		}
		seen[s.Name] = true
		if s.Forward == "" {
			return fmt.Errorf("service %q has no backend: give --forward %s=HOST:PORT (in the file, forward: under the service)", s.Name, s.Name)
		}
		if err := forwardAddr("--forward", s.Forward, "service "+s.Name+"'s backend"); err != nil {
			return err
		}
	}
	proxied := map[string]bool{}
	for _, name := range c.ProxyProtocol {
		if name != DefaultService && !seen[name] || name == DefaultService && c.Forward == "" {
			return fmt.Errorf("--proxy-protocol %s: the exit has no service %q: name one of %s (the default service is called %s)", name, name, strings.Join(c.serviceNames(), ", "), DefaultService)
		}
		if proxied[name] {
			return fmt.Errorf("--proxy-protocol names service %q twice: name it once", name)
		}
		proxied[name] = true
	}
	restricted := map[string]bool{}
	for _, a := range c.Access {
		name := a.Service
		if name != DefaultService && !seen[name] || name == DefaultService && c.Forward == "" {
			return fmt.Errorf("--allow %s=...: the exit has no service %q: name one of %s, or forward it first with --forward %s=HOST:PORT", name, name, strings.Join(c.serviceNames(), ", "), name)
		}
		if restricted[name] {
			return fmt.Errorf("--allow: service %q is restricted twice: list all of its keys in one --allow %s=KEY,KEY (in the file, one allow: list)", name, name)
		}
		restricted[name] = true
		if len(a.Keys) == 0 {
			return fmt.Errorf("--allow %s= (allow: [] or an allow: with no value under the service in the file) names no key, "+
				"which would not mean \"every key\": list the keys that may reach %s, fingerprints (SHA256:...) or key file names (app1 for app1.pub), "+
				"or remove the rule (the allow: key) to let every authorized key reach it", name, name)
		}
		for _, k := range a.Keys {
			if k == "" {
				return fmt.Errorf("--allow %s=%s has an empty key name: separate keys with single commas", name, strings.Join(a.Keys, ","))
			}
		}
	}
	return nil
}

// serviceNames lists the exit's services as settings name them.
func (c Exit) serviceNames() []string {
	var names []string
	for _, s := range c.AllServices() {
		names = append(names, DisplayName(s.Name))
	}
	return names
}

// validateListeners checks the entry's listeners.
func (c Entry) validateListeners() error {
	if c.Listen == "" && len(c.Listeners) == 0 {
		return listenAddr("--listen", "")
	}
	if c.Listen != "" {
		if err := entryListenAddr(c.Listen); err != nil {
			return err
		}
	}
	if c.ListenMode > 0o777 {
		return fmt.Errorf("--listen-mode %04o: give permission bits, 0 to 0777, e.g. 0660", c.ListenMode)
	}
	var addrs []string
	for _, l := range c.Listeners {
		if l.Service != "" {
			if err := ValidServiceName(l.Service); err != nil {
				return fmt.Errorf("--listen %s=%s: %v", l.Addr, l.Service, err)
			}
			if l.Service == DefaultService {
				return fmt.Errorf("--listen %s=%s: %q is the default service: give it as --listen %s without a name", l.Addr, l.Service, DefaultService, l.Addr)
			}
		}
		if err := entryListenAddr(l.Addr); err != nil {
			return fmt.Errorf("%v (service %s)", err, DisplayName(l.Service))
		}
		if l.Mode != 0 && !IsUnix(l.Addr) {
			return fmt.Errorf("service %s listens on %s with mode %04o: a mode is for a UNIX socket (unix:PATH) only", DisplayName(l.Service), l.Addr, l.Mode)
		}
		if l.Mode > 0o777 {
			return fmt.Errorf("service %s: mode %04o: give permission bits, 0 to 0777, e.g. 0660", DisplayName(l.Service), l.Mode)
		}
	}
	if c.ListenMode != 0 && !slices.ContainsFunc(c.AllListeners(), func(l EntryListener) bool { return IsUnix(l.Addr) }) {
		return fmt.Errorf("--listen-mode %04o applies to no listener: it sets the mode of UNIX sockets, --listen unix:PATH", c.ListenMode)
	}
	for _, l := range c.AllListeners() {
		if _, port, _ := net.SplitHostPort(l.Addr); port != "0" && slices.Contains(addrs, l.Addr) {
			return fmt.Errorf("--listen %s is given twice: give each service its own address (HOST:PORT=NAME)", l.Addr)
		}
		addrs = append(addrs, l.Addr)
	}
	return nil
}
