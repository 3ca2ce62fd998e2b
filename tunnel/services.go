package tunnel

// Named services and access control (PROTOCOL.md section 4).
//
// The exit has a fixed set of services, each a backend address; the empty
// name on the wire is the default service, which settings, logs, /status
// and metrics call config.DefaultService. Its access rules, resolved
// against the authorized keys when the exit starts and again on every
// reload, restrict some services to some keys; a service no rule names
// admits every authorized key. Every stream is checked against the rules
// in force when it opens, on sessions old and new.
//
// Each service has its own counters (ledger.Service), which the status
// endpoint and the metrics show by service. The set of services is fixed
// when the agent starts, so a label value never comes from the wire: a
// stream naming a service the exit does not have is counted under the
// empty service name.

import (
	"fmt"
	"strings"

	"github.com/tunnel-dev/tunnel/config"
	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/backendprobe"
	"github.com/tunnel-dev/tunnel/tunnel/ledger"
)

// route is one service of the exit.
type route struct {
	name serviceName
	addr string // the backend as the settings give it: host:port or unix:PATH
	// network and dialAddr are what the exit dials for addr: "tcp" and
	// host:port, or "unix" and PATH.
	network, dialAddr string
	// proxyProtocol: the backend connection starts with a PROXY protocol
	// v2 header (package proxyheader).
	proxyProtocol bool
	probe         *backendprobe.Probe
	count         *ledger.Service
}

// routeTable maps names to the exit's services. Read-only once built.
type routeTable struct {
	byName map[serviceName]*route
	all    []*route // in the order of the settings
}

// newRouteTable makes the table of the services c forwards. It refuses a
// name that is not a service name, and a service given twice.
func newRouteTable(c ExitSettings, books *ledger.Ledger) (*routeTable, error) {
	t := &routeTable{byName: map[serviceName]*route{}}
	for _, s := range c.Services {
		name, err := parseServiceName(s.Name)
		if err != nil {
			return nil, fmt.Errorf("tunnel: exit settings: %w", err)
		}
		if t.byName[name] != nil {
			return nil, fmt.Errorf("tunnel: exit settings: service %s is given twice", name)
		}
		if s.Backend == "" {
			return nil, fmt.Errorf("tunnel: exit settings: service %s has no backend", name)
		}
		network, dialAddr := config.Network(s.Backend)
		r := &route{
			name:          name,
			addr:          s.Backend,
			network:       network,
			dialAddr:      dialAddr,
			proxyProtocol: s.ProxyProtocol,
			probe:         backendprobe.New(s.Backend, c.DialTimeout),
			count:         books.Service(name.String()),
		}
		t.byName[name] = r
		t.all = append(t.all, r)
	}
	return t, nil
}

// access is the exit's access rules, resolved to fingerprints: for each
// restricted service (by wire name), the keys that may reach it. A service
// not in the map admits every authorized key. Read-only once built.
type access map[serviceName]map[string]bool

// allows reports whether the key with fingerprint fp may reach service.
func (a access) allows(service serviceName, fp string) bool {
	keys, restricted := a[service]
	return !restricted || keys[fp]
}

// visible lists the services of t that fp may reach, as settings name them.
func (a access) visible(t *routeTable, fp string) []string {
	var out []string
	for _, r := range t.all {
		if a.allows(r.name, fp) {
			out = append(out, r.name.String())
		}
	}
	return out
}

// resolveAccess turns the rules into fingerprints with the keys of
// authorized. A key name that matches no key, or a fingerprint that is not
// authorized, admits nobody; unresolved lists them, by rule.
func resolveAccess(rules []AccessRule, authorized *handshake.KeySet) (a access, unresolved []AccessRule) {
	a = access{}
	known := map[string]bool{}
	for _, fp := range authorized.Fingerprints() {
		known[fp] = true
	}
	for _, rule := range rules {
		service := wireServiceName(rule.Service)
		keys := map[string]bool{}
		var missing []string
		for _, k := range rule.Keys {
			var fps []string
			if strings.HasPrefix(k, "SHA256:") {
				if known[k] {
					fps = []string{k}
				}
			} else {
				fps = authorized.Named(k)
			}
			if len(fps) == 0 {
				missing = append(missing, k)
			}
			for _, fp := range fps {
				keys[fp] = true
			}
		}
		if len(missing) > 0 {
			unresolved = append(unresolved, AccessRule{Service: rule.Service, Keys: missing})
		}
		a[service] = keys
	}
	return a, unresolved
}

// UnknownKeysError is NewExit's error when access rules name keys that are
// not among the authorized keys: such a key admits nobody, which is
// taken for a mistake.
type UnknownKeysError struct {
	// Rules are the access rules at fault, each with only its keys that
	// match no authorized key (a name with no key of that name, or a
	// fingerprint not authorized).
	Rules []AccessRule
}

func (e *UnknownKeysError) Error() string {
	var b strings.Builder
	b.WriteString("tunnel: ")
	for i, r := range e.Rules {
		if i > 0 {
			b.WriteString("; ")
		}
		verb := "are"
		if len(r.Keys) == 1 {
			verb = "is"
		}
		fmt.Fprintf(&b, "the access rule for service %s names %s, which %s not among the authorized keys",
			config.DisplayName(r.Service), strings.Join(r.Keys, ", "), verb)
	}
	b.WriteString(": name an authorized key by its fingerprint (SHA256:...) or by its name (app1 for a key loaded from app1.pub)")
	return b.String()
}

// ruleKeys lists the keys of rules as SERVICE=KEY, for a log line.
func ruleKeys(rules []AccessRule) []string {
	var out []string
	for _, r := range rules {
		for _, k := range r.Keys {
			out = append(out, config.DisplayName(r.Service)+"="+k)
		}
	}
	return out
}
