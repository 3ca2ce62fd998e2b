package main

// The --config file: YAML keyed by flag name, at the top level or under the
// command's name (exit:, entry:). It is read once, as a YAML node tree, so
// that every problem found in it is reported as FILE:LINE: KEY: what is
// wrong, with the line in the whole file and the key as the file writes it
// (services.db.forward, exit.dial-timeout), whichever part of the command
// finds it: the check of the keys here, kong's decoding of a value, or the
// validation of the settings (see configSource.locate).

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kong"
	kongyaml "github.com/alecthomas/kong-yaml"
	"gopkg.in/yaml.v3"

	"github.com/tunnel-dev/tunnel/config"
)

// configFlag is --config: a YAML file keyed by flag name. Setting it (by flag or TUNNEL_CONFIG)
// adds the file as a resolver before the other flags are resolved.
type configFlag string

// configSource is what the command knows of its --config file: where each flag's key is, and
// which flags took their value from it. parse binds one into kong, so that BeforeResolve fills
// it and run can place an error in the file.
type configSource struct {
	path string
	keys map[string]configKey // by flag name; the command's section wins over the top level
	used map[string]bool      // flags whose value came from the file
}

// configKey is where the file sets a flag.
type configKey struct {
	line int
	name string // as the file writes it: "listen", "exit.listen"
}

// configError is a problem in the --config file, at a line of it.
type configError struct {
	path string
	line int    // 0: the file as a whole (unreadable)
	key  string // the key as the file writes it (services.db.forward); "" for the file as a whole
	msg  string
}

func (e *configError) Error() string {
	var b strings.Builder
	b.WriteString(e.path)
	if e.line > 0 {
		b.WriteString(":" + strconv.Itoa(e.line))
	}
	b.WriteString(": ")
	if e.key != "" {
		b.WriteString(e.key + ": ")
	}
	b.WriteString(e.msg)
	return b.String()
}

// BeforeResolve loads the file, rejects keys that name no flag and values that cannot be right
// (a duration without its unit, a service with an unknown field), and adds its resolver.
func (c configFlag) BeforeResolve(k *kong.Kong, kctx *kong.Context, trace *kong.Path, src *configSource) error {
	path := kong.ExpandPath(string(kctx.FlagValue(trace.Flag).(configFlag)))
	src.path = path
	data, err := os.ReadFile(path)
	if err != nil {
		return &configError{path: path, msg: causeOf(err)}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, msg := yamlErrorLine(err)
		return &configError{path: path, line: line, msg: "not YAML: " + msg}
	}
	cmd := ""
	if n := kctx.Selected(); n != nil {
		cmd = n.Name
	}
	if err := src.check(k.Model.Node, &doc, cmd); err != nil {
		return err
	}
	r, err := yamlResolver(bytes.NewReader(data), src)
	if err != nil {
		return &configError{path: path, msg: err.Error()}
	}
	kctx.AddResolver(r)
	return nil
}

// cause is the reason a file could not be read, without the path that the message names already.
func causeOf(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// yamlLine finds "line N: " in a message of gopkg.in/yaml.v3, whose lines count from the
// start of what it parsed (the whole file, here).
var yamlLine = regexp.MustCompile(`line (\d+): `)

// yamlErrorLine splits a yaml.v3 error into its line (0 if it names none) and the rest.
func yamlErrorLine(err error) (int, string) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.TrimPrefix(msg, "unmarshal errors:\n  ")
	if m := yamlLine.FindStringSubmatchIndex(msg); m != nil {
		n, _ := strconv.Atoi(msg[m[2]:m[3]])
		return n, msg[:m[0]] + msg[m[1]:]
	}
	return 0, msg
}

// check accepts, at the top level, any flag name of any command and, as a map, any command
// name; under a command, that command's flags and the global ones. A duration must be written
// with its unit: YAML reads "5" as a number, which kong would take as nanoseconds. The services
// of cmd (the command being run) are checked field by field. It records where each flag is set.
func (src *configSource) check(app *kong.Node, doc *yaml.Node, cmd string) error {
	if doc.Kind == 0 {
		return nil // an empty file
	}
	root := doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		return &configError{path: src.path, line: root.Line, msg: "give a map of flag names to values, e.g. listen: 127.0.0.1:5000"}
	}
	flags := func(n *kong.Node) map[string]*kong.Flag {
		m := map[string]*kong.Flag{}
		for _, group := range n.AllFlags(true) {
			for _, f := range group {
				if f.Name != "help" && f.Name != "config" && f.Name != "version" {
					m[f.Name] = f
				}
			}
		}
		return m
	}
	all := flags(app)
	cmds := map[string]*kong.Node{}
	for _, c := range app.Children {
		cmds[c.Name] = c
		maps.Copy(all, flags(c))
	}
	src.keys = map[string]configKey{}
	var section *yaml.Node // the running command's own section, applied after the top level
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if c, ok := cmds[k.Value]; ok {
			if v.Kind != yaml.MappingNode {
				return &configError{path: src.path, line: k.Line, key: k.Value,
					msg: fmt.Sprintf("must be a map of %s's flag names to values, e.g. %s: {listen: ...}", k.Value, k.Value)}
			}
			own := flags(c)
			for j := 0; j+1 < len(v.Content); j += 2 {
				kk, vv := v.Content[j], v.Content[j+1]
				f := own[kk.Value]
				if f == nil {
					return &configError{path: src.path, line: kk.Line, key: k.Value,
						msg: fmt.Sprintf("unknown key %q%s: keys under %s: are %s's flag names without the dashes in front, e.g. listen",
							kk.Value, didYouMean(kk.Value, slices.Collect(maps.Keys(own))), k.Value, k.Value)}
				}
				if err := src.checkValue(f, k.Value+"."+kk.Value, kk, vv, cmd == k.Value); err != nil {
					return err
				}
			}
			if cmd == k.Value {
				section = v
			}
			continue
		}
		f := all[k.Value]
		if f == nil {
			names := slices.Collect(maps.Keys(all))
			return &configError{path: src.path, line: k.Line,
				msg: fmt.Sprintf("unknown key %q%s: keys are flag names without the dashes in front, e.g. listen, peer-key",
					k.Value, didYouMean(k.Value, append(names, slices.Collect(maps.Keys(cmds))...)))}
		}
		if err := src.checkValue(f, k.Value, k, v, true); err != nil {
			return err
		}
	}
	if section != nil {
		for j := 0; j+1 < len(section.Content); j += 2 {
			kk := section.Content[j]
			src.keys[kk.Value] = configKey{line: kk.Line, name: cmd + "." + kk.Value}
		}
	}
	return nil
}

// checkValue checks the value v of flag f, written under key (at the key node k). Only a value
// the running command uses (mine) has its services checked and its place recorded.
func (src *configSource) checkValue(f *kong.Flag, key string, k, v *yaml.Node, mine bool) error {
	if f.Target.IsValid() && f.Target.Type() == reflect.TypeFor[time.Duration]() && v.Kind == yaml.ScalarNode &&
		(v.Tag == "!!int" || v.Tag == "!!float") {
		return &configError{path: src.path, line: v.Line, key: key, msg: v.Value + ": " + errNoUnit(v.Value).Error()}
	}
	if !mine {
		return nil
	}
	if !strings.Contains(key, ".") {
		src.keys[f.Name] = configKey{line: k.Line, name: key}
	}
	if f.Name != "services" || !f.Target.IsValid() {
		return nil
	}
	switch f.Target.Type() {
	case reflect.TypeFor[exitServices]():
		return src.checkExitServices(key, v)
	case reflect.TypeFor[entryServices]():
		return src.checkEntryServices(key, v)
	}
	return nil
}

// Fields of a service in the file.
var (
	exitServiceFields  = []string{"forward", "allow", "proxy-protocol"}
	entryServiceFields = []string{"listen", "service", "mode"}
)

// checkExitServices checks an exit's services: map, a map of service name to {forward, allow,
// proxy-protocol}.
func (src *configSource) checkExitServices(key string, v *yaml.Node) error {
	fail := func(n *yaml.Node, key, format string, args ...any) error {
		return &configError{path: src.path, line: n.Line, key: key, msg: fmt.Sprintf(format, args...)}
	}
	if v.Kind != yaml.MappingNode {
		return fail(v, key, "give a map of service name to {forward: HOST:PORT, allow: [KEY, ...], proxy-protocol: true}, e.g. db: {forward: db:5432}")
	}
	for i := 0; i+1 < len(v.Content); i += 2 {
		name, spec := v.Content[i], v.Content[i+1]
		at := key + "." + name.Value
		if err := config.ValidServiceName(name.Value); err != nil {
			return fail(name, key, "%v", err)
		}
		if spec.Kind != yaml.MappingNode {
			return fail(spec, at, "give the service's settings as a map, e.g. {forward: db:5432}")
		}
		forward := false
		for j := 0; j+1 < len(spec.Content); j += 2 {
			f, fv := spec.Content[j], spec.Content[j+1]
			switch f.Value {
			case "forward":
				if fv.Kind != yaml.ScalarNode || fv.Tag == "!!null" {
					return fail(fv, at+".forward", "give the backend as HOST:PORT or unix:PATH")
				}
				forward = true
			case "allow":
				if fv.Kind == yaml.SequenceNode {
					for _, item := range fv.Content {
						if item.Kind != yaml.ScalarNode {
							return fail(item, at+".allow", "give a list of keys, e.g. allow: [app1, \"SHA256:...\"]")
						}
					}
				} else if fv.Kind != yaml.ScalarNode || fv.Tag != "!!null" {
					return fail(fv, at+".allow", "give a list of keys, e.g. allow: [app1, \"SHA256:...\"]")
				}
			case "proxy-protocol":
				var b bool
				if fv.Decode(&b) != nil {
					return fail(fv, at+".proxy-protocol", "%q: give true or false", fv.Value)
				}
			default:
				return fail(f, at, "unknown field %q%s: a service has %s", f.Value, didYouMean(f.Value, exitServiceFields), strings.Join(exitServiceFields, ", "))
			}
		}
		if !forward {
			return fail(name, at, "no forward: give its backend as forward: HOST:PORT")
		}
	}
	return nil
}

// checkEntryServices checks an entry's services: list of {listen, service, mode}.
func (src *configSource) checkEntryServices(key string, v *yaml.Node) error {
	fail := func(n *yaml.Node, key, format string, args ...any) error {
		return &configError{path: src.path, line: n.Line, key: key, msg: fmt.Sprintf(format, args...)}
	}
	if v.Kind != yaml.SequenceNode {
		return fail(v, key, "give a list of {listen: HOST:PORT or unix:PATH, service: NAME, mode: \"0660\"}, e.g. [{listen: 127.0.0.1:5432, service: db}]")
	}
	for i, item := range v.Content {
		at := fmt.Sprintf("%s[%d]", key, i)
		if item.Kind != yaml.MappingNode {
			return fail(item, at, "give a listener as {listen: HOST:PORT, service: NAME}")
		}
		listen := false
		for j := 0; j+1 < len(item.Content); j += 2 {
			f, fv := item.Content[j], item.Content[j+1]
			switch f.Value {
			case "listen":
				listen = fv.Kind == yaml.ScalarNode && fv.Value != ""
			case "service":
				if err := config.ValidServiceName(fv.Value); err != nil {
					return fail(fv, at+".service", "%v", err)
				}
			case "mode":
				var m socketMode
				if err := m.UnmarshalYAML(fv); err != nil {
					return fail(fv, at+".mode", "%v", err)
				}
			default:
				return fail(f, at, "unknown field %q%s: a listener has %s", f.Value, didYouMean(f.Value, entryServiceFields), strings.Join(entryServiceFields, ", "))
			}
		}
		if !listen {
			return fail(item, at, "no listen: give listen: HOST:PORT or listen: unix:PATH")
		}
	}
	return nil
}

// leadingFlag finds the flag an error message starts with: "--dial-timeout: ..." or
// "--forward \"x\" is not ...".
var leadingFlag = regexp.MustCompile(`^--([a-z0-9-]+)(: | )`)

// locate places err in the --config file when it is about a flag whose value came from the
// file: "--dial-timeout: "3x" is not a duration" becomes
// "FILE:LINE: exit.dial-timeout: "3x" is not a duration". Other errors are returned as they are.
func (src *configSource) locate(err error) error {
	if src == nil || src.path == "" || errors.As(err, new(*configError)) {
		return err
	}
	msg := err.Error()
	m := leadingFlag.FindStringSubmatchIndex(msg)
	if m == nil {
		return err
	}
	name := msg[m[2]:m[3]]
	k, ok := src.keys[name]
	if !ok || !src.used[name] {
		return err
	}
	var ue usageError
	located := &configError{path: src.path, line: k.line, key: k.name, msg: msg[m[1]:]}
	if errors.As(err, &ue) {
		return usageError{located}
	}
	return located
}

// didYouMean returns ` (did you mean "NAME"?)` for the name in names closest to word, when one
// is close enough to be a likely typo, else "".
func didYouMean(word string, names []string) string {
	best, bestD := "", 3
	slices.Sort(names)
	for _, n := range names {
		if d := editDistance(word, n); d < bestD {
			best, bestD = n, d
		}
	}
	if best == "" || bestD > max(1, len(word)/3) {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// yamlResolver wraps kong-yaml's resolver. A key may be a flag name at the top level ("listen")
// or under its command ("exit: {listen: ...}"), the latter winning. A flag whose TUNNEL_*
// variable is set ignores the file, so that the environment beats the file (kong alone lets
// resolvers win over the environment). It records in src which flags the file set.
func yamlResolver(r io.Reader, src *configSource) (kong.Resolver, error) {
	inner, err := kongyaml.Loader(r)
	if err != nil {
		return nil, err
	}
	return kong.ResolverFunc(func(kctx *kong.Context, parent *kong.Path, flag *kong.Flag) (any, error) {
		for _, name := range flag.Envs {
			if _, ok := os.LookupEnv(name); ok {
				return nil, nil
			}
		}
		v, err := inner.Resolve(kctx, parent, flag)
		if v == nil && err == nil {
			v, err = inner.Resolve(kctx, &kong.Path{App: kctx.Model}, flag)
		}
		if v != nil && src != nil {
			if src.used == nil {
				src.used = map[string]bool{}
			}
			src.used[flag.Name] = true
		}
		return v, err
	}), nil
}
