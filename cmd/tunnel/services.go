package main

// Named services on the command line and in the --config file.
//
// Flags: the exit takes --forward [NAME=]HOST:PORT, --allow
// SERVICE=KEY[,KEY...] and --proxy-protocol SERVICE, the entry --listen
// HOST:PORT[=NAME], each as often as needed; an address may be a UNIX
// socket, unix:PATH. In the file, besides those keys (a list for a repeated
// flag), "services:" describes the services in one place: on the exit a
// map of service name to {forward, allow, proxy-protocol}, on the entry a
// list of {listen, service, mode}. The
// --services flag takes the same YAML inline.

import (
	"bytes"
	"fmt"
	"io/fs"
	"slices"

	"github.com/alecthomas/kong"
	"gopkg.in/yaml.v3"

	"github.com/tunnel-dev/tunnel/config"
)

// exitServiceSpec is one service under an exit's "services:".
type exitServiceSpec struct {
	Forward string `yaml:"forward"`
	// Allow is kept as written, so that an allow: given with no keys
	// (allow: [], or allow: alone, which YAML reads as null) is told apart
	// from no allow: at all; see allowKeys.
	Allow         yaml.Node `yaml:"allow"`
	ProxyProtocol bool      `yaml:"proxy-protocol"`
}

// allowKeys returns the keys of the service's allow: list; given is false
// when the service has no allow: key (every authorized key may reach it).
// An allow: with no keys is returned as given with no keys, which
// config.Exit.Validate refuses: it must not read as "no rule".
func (s exitServiceSpec) allowKeys() (keys []string, given bool, err error) {
	switch {
	case s.Allow.Kind == 0:
		return nil, false, nil
	case s.Allow.Kind == yaml.ScalarNode && s.Allow.ShortTag() == "!!null":
		return []string{}, true, nil
	}
	if err := s.Allow.Decode(&keys); err != nil {
		return nil, true, fmt.Errorf("allow: %v: give a list of keys, e.g. allow: [app1, \"SHA256:...\"]", err)
	}
	if keys == nil {
		keys = []string{}
	}
	return keys, true, nil
}

// exitServices is the exit's "services:" map, by service name.
type exitServices map[string]exitServiceSpec

// entryServiceSpec is one listener under an entry's "services:".
type entryServiceSpec struct {
	Listen  string     `yaml:"listen"`
	Service string     `yaml:"service"`
	Mode    socketMode `yaml:"mode"` // a UNIX socket's permission bits
}

// socketMode is the permission bits of a UNIX socket file, written in
// octal: "0660" on the command line or quoted in YAML. YAML reads an
// unquoted 0660 as the octal number it is (432), which is taken as is; an
// unquoted 660 is decimal, out of range, and refused.
type socketMode fs.FileMode

// UnmarshalYAML reads a mode from the file or from --services.
func (m *socketMode) UnmarshalYAML(n *yaml.Node) error {
	if n.Tag == "!!int" {
		var v int64
		if err := n.Decode(&v); err != nil {
			return err
		}
		return m.set(v)
	}
	return m.parse(n.Value)
}

// Decode reads --listen-mode from the command line or the environment
// (octal text), or from the config file (what YAML made of it).
func (m *socketMode) Decode(ctx *kong.DecodeContext) error {
	t := ctx.Scan.Pop()
	switch v := t.Value.(type) {
	case string:
		return m.parse(v)
	case int:
		return m.set(int64(v))
	case int64:
		return m.set(v)
	case uint64:
		return m.set(int64(min(v, 1<<32)))
	}
	return fmt.Errorf("--listen-mode %v: give permission bits in octal, e.g. 0660", t.Value)
}

func (m *socketMode) parse(s string) error {
	mode, err := config.ParseMode(s)
	*m = socketMode(mode)
	return err
}

// set takes v, the mode as a number (YAML's reading of 0660 is 432).
func (m *socketMode) set(v int64) error {
	if v <= 0 || v > 0o777 {
		return fmt.Errorf("mode %d is not permission bits: write them in octal with a leading 0, e.g. 0660 (owner and group may connect)", v)
	}
	*m = socketMode(v)
	return nil
}

// entryServices is the entry's "services:" list.
type entryServices []entryServiceSpec

// Decode reads the exit's services from the config file (a YAML map) or
// from the flag or environment (the same map as YAML text).
func (s *exitServices) Decode(ctx *kong.DecodeContext) error {
	return decodeYAML(ctx, s, "a map of service name to {forward: HOST:PORT, allow: [KEY, ...]}, e.g. {db: {forward: db:5432}}")
}

// Decode reads the entry's services from the config file (a YAML list) or
// from the flag or environment (the same list as YAML text).
func (s *entryServices) Decode(ctx *kong.DecodeContext) error {
	return decodeYAML(ctx, s, "a list of {listen: HOST:PORT or unix:PATH, service: NAME, mode: \"0660\"}, e.g. [{listen: 127.0.0.1:5432, service: db}]")
}

// decodeYAML decodes the next value, YAML text or what the YAML file held
// there, strictly into target: a key it does not know is an error.
func decodeYAML(ctx *kong.DecodeContext, target any, want string) error {
	t := ctx.Scan.Pop()
	var text []byte
	switch v := t.Value.(type) {
	case string:
		text = []byte(v)
	default:
		var err error
		if text, err = yaml.Marshal(v); err != nil {
			return fmt.Errorf("services: %v; give %s", err, want)
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(text))
	dec.KnownFields(true)
	if err := dec.Decode(target); err != nil {
		return fmt.Errorf("services: %v; give %s", err, want)
	}
	return nil
}

// exitServiceSettings adds the services of the --forward, --allow and
// --services values to c.
func exitServiceSettings(c *config.Exit, forward, allow []string, services exitServices) error {
	for _, v := range forward {
		name, addr, err := config.ParseForward(v)
		if err != nil {
			return err
		}
		if err := addExitService(c, name, addr); err != nil {
			return err
		}
	}
	names := make([]string, 0, len(services))
	for name := range services {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		spec := services[name]
		if err := config.ValidServiceName(name); err != nil {
			return fmt.Errorf("services: %v", err)
		}
		wire := name
		if name == config.DefaultService {
			wire = ""
		}
		if err := addExitService(c, wire, spec.Forward); err != nil {
			return err
		}
		keys, given, err := spec.allowKeys()
		if err != nil {
			return fmt.Errorf("services: %s: %v", name, err)
		}
		if given {
			c.Access = append(c.Access, config.Access{Service: name, Keys: keys})
		}
		if spec.ProxyProtocol {
			c.ProxyProtocol = append(c.ProxyProtocol, name)
		}
	}
	for _, v := range allow {
		a, err := config.ParseAllow(v)
		if err != nil {
			return err
		}
		c.Access = append(c.Access, a)
	}
	return nil
}

// addExitService adds the service name (wire name: "" is the default) with
// backend addr to c, refusing a second one of the same name.
func addExitService(c *config.Exit, name, addr string) error {
	display := config.DisplayName(name)
	if name == "" {
		if c.Forward != "" {
			return fmt.Errorf("--forward: the default service is given twice (%s and %s): give one unnamed --forward, and name the others, e.g. --forward db=%s", c.Forward, addr, addr)
		}
		c.Forward = addr
		if addr == "" {
			return fmt.Errorf("services: %s has no forward: give its backend as forward: HOST:PORT", display)
		}
		return nil
	}
	for _, s := range c.Services {
		if s.Name == name {
			return fmt.Errorf("service %q is given twice (backends %s and %s): give each service one --forward, or one entry under services: in the file", name, s.Forward, addr)
		}
	}
	c.Services = append(c.Services, config.ExitService{Name: name, Forward: addr})
	return nil
}

// entryListenerSettings adds the listeners of the --listen and --services
// values to c. Without any, the entry listens on config.DefaultEntryListen
// for the default service.
func entryListenerSettings(c *config.Entry, listen []string, services entryServices) error {
	var all []config.EntryListener
	for _, v := range listen {
		addr, name, err := config.ParseListen(v)
		if err != nil {
			return err
		}
		all = append(all, config.EntryListener{Addr: addr, Service: name})
	}
	for i, s := range services {
		if s.Listen == "" {
			return fmt.Errorf("services: listener %d (service %q) has no listen: give listen: HOST:PORT or listen: unix:PATH", i+1, s.Service)
		}
		name := s.Service
		if name != "" {
			if err := config.ValidServiceName(name); err != nil {
				return fmt.Errorf("services: listener %d: %v", i+1, err)
			}
		}
		if name == config.DefaultService {
			name = ""
		}
		all = append(all, config.EntryListener{Addr: s.Listen, Service: name, Mode: fs.FileMode(s.Mode)})
	}
	if len(all) == 0 {
		all = []config.EntryListener{{Addr: config.DefaultEntryListen}}
	}
	for _, l := range all {
		if l.Service == "" && c.Listen == "" {
			c.Listen = l.Addr
			continue
		}
		c.Listeners = append(c.Listeners, l)
	}
	return nil
}
