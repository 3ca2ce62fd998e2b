package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kong"
	kongyaml "github.com/alecthomas/kong-yaml"
	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"github.com/tunnel-dev/tunnel/config"
	"github.com/tunnel-dev/tunnel/handshake"
)

// Exit codes.
const (
	exitOK      = 0
	exitRuntime = 1 // the command ran and failed
	exitUsage   = 2 // bad flags, environment, config file or key files
)

// cli is the command line. Every flag can also come from the environment as TUNNEL_<FLAG> (upper
// snake case) and from the --config YAML file, keyed by flag name; flag > env > file > default.
type cli struct {
	LogLevel  string     `help:"Log level: debug, info, warn or error." enum:"debug,info,warn,error" default:"info"`
	LogFormat string     `help:"Log format on stderr: json, console, or auto (console when stderr is a terminal, json otherwise)." enum:"auto,json,console" default:"auto"`
	Config    configFlag `help:"YAML file of settings, keyed by flag name (listen: ':7000', peer-key: exit.pub), either at the top level or under 'exit:' / 'entry:'. Flags and TUNNEL_* environment variables override it." placeholder:"FILE"`
	// PrintVersion is --version; TUNNEL_VERSION, a common name for an image tag, must not set it.
	PrintVersion kong.VersionFlag `name:"version" env:"-" help:"Print the version of this build and exit."`

	Keygen      keygenCmd      `cmd:"" help:"Make an RSA key pair: PATH.key (private, mode 0600) and PATH.pub (public). Prints the fingerprint."`
	Fingerprint fingerprintCmd `cmd:"" help:"Print the SHA256 fingerprint of a public or private key file."`
	Version     versionCmd     `cmd:"" help:"Print the version of this build."`
	Help        helpCmd        `cmd:"" help:"Print this help, or a command's (tunnel help exit)."`
	Exit        exitCmd        `cmd:"" help:"Run the exit agent: accept entry agents, and dial the backend for each stream they open."`
	Entry       entryCmd       `cmd:"" help:"Run the entry agent: accept plaintext TCP from apps and carry it, encrypted, to the exit agent."`
	Demo        demoCmd        `cmd:"" help:"Run a self-contained loopback demo: fresh keys, a backend, an exit, an entry, and what the wire shows."`
	Healthcheck healthcheckCmd `cmd:"" help:"Ask an agent's status endpoint (default /readyz on --status-addr); exit 0 if it answers 2xx, else 1. For container health checks."`
}

// env is what every command's Run receives.
type env struct {
	ctx    context.Context // cancelled on the first SIGINT/SIGTERM
	reload <-chan struct{} // a value per SIGHUP (never, when nil)
	build  build
	stdout io.Writer
	stderr io.Writer
	log    zerolog.Logger
}

// usageError is a problem with what the user gave (flags, environment, config or key files);
// it exits with exitUsage.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// kongExit carries an exit code requested by kong (after --help) out of Parse.
type kongExit int

// run parses args and runs the command they name. It returns the process exit code. An error is
// written to stderr as one line: a log line at level "fatal" with exit_code when logs are JSON,
// else plain text starting "tunnel: " (as are errors in the flags, found before the log format
// is known). An agent receives a value on reload per SIGHUP (nil: never).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, reload <-chan struct{}) (code int) {
	defer func() {
		if r := recover(); r != nil {
			k, ok := r.(kongExit)
			if !ok {
				panic(r)
			}
			code = int(k)
		}
	}()
	c, kctx, err := parse(args, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "tunnel: %v (see tunnel --help)\n", err)
		return exitUsage
	}
	log, jsonLogs, err := newLogger(stderr, c.LogLevel, c.LogFormat)
	if err != nil {
		fmt.Fprintf(stderr, "tunnel: %v\n", err)
		return exitUsage
	}
	err = kctx.Run(&env{ctx: ctx, reload: reload, build: thisBuild(), stdout: stdout, stderr: stderr, log: log})
	if err == nil {
		return exitOK
	}
	code = exitRuntime
	if errors.As(err, new(usageError)) {
		code = exitUsage
	}
	if jsonLogs {
		// One more log line, so that whatever collects the logs sees why the process ended.
		log.WithLevel(zerolog.FatalLevel).Int("exit_code", code).Msg(err.Error())
	} else {
		fmt.Fprintln(stderr, errorLine(err))
	}
	return code
}

// errorLine is err as the command prints it: after the program's name, which an error from the
// tunnel package already starts with.
func errorLine(err error) string {
	if msg := err.Error(); strings.HasPrefix(msg, "tunnel: ") {
		return msg
	}
	return "tunnel: " + err.Error()
}

// parse resolves args, the TUNNEL_* environment and the --config file into a cli. Help and
// --version output make it panic with a kongExit, which run recovers.
func parse(args []string, stdout, stderr io.Writer) (*cli, *kong.Context, error) {
	var c cli
	parser, err := kong.New(&c,
		kong.Name("tunnel"),
		kong.Description("An encrypting TCP tunnel sidecar (RSA-authenticated handshake, AES-256-CFB + HMAC-SHA256 records, yamux streams)."),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { panic(kongExit(code)) }),
		kong.DefaultEnvars("TUNNEL"),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		kong.Vars(defaultVars()),
		kong.Vars{"version": thisBuild().String()},
		kong.TypeMapper(reflect.TypeFor[time.Duration](), durationMapper()),
	)
	if err != nil {
		return nil, nil, err
	}
	kctx, err := parser.Parse(args)
	if err != nil {
		return nil, nil, err
	}
	return &c, kctx, nil
}

// helpCmd is `tunnel help [COMMAND]`, the same as `tunnel [COMMAND] --help`.
type helpCmd struct {
	Command []string `arg:"" optional:"" help:"The command to describe."`
}

// Run parses the command again with --help, which prints the help and makes kong exit (run
// recovers it).
func (c *helpCmd) Run(kctx *kong.Context) error {
	if _, err := kctx.Kong.Parse(append(c.Command, "--help")); err != nil {
		return usagef("help %s: %v: give a command that tunnel --help lists", strings.Join(c.Command, " "), err)
	}
	return nil
}

// durationMapper reads a duration flag as time.ParseDuration does, but a number without a unit
// (5 from the command line, the environment or the config file) gets a message that says to add
// one: kong's own mapper takes a YAML number as nanoseconds.
func durationMapper() kong.MapperFunc {
	return func(ctx *kong.DecodeContext, target reflect.Value) error {
		t, err := ctx.Scan.PopValue("duration")
		if err != nil {
			return err
		}
		s, ok := t.Value.(string)
		if !ok {
			return fmt.Errorf("%v: %w", t.Value, errNoUnit(fmt.Sprint(t.Value)))
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
				return fmt.Errorf("%q: %w", s, errNoUnit(s))
			}
			return fmt.Errorf("%q is not a duration: write it like 5s, 250ms or 1m30s", s)
		}
		target.Set(reflect.ValueOf(d))
		return nil
	}
}

// errNoUnit says how to write the number n as a duration.
func errNoUnit(n string) error {
	return fmt.Errorf("a duration needs a unit: write %ss (or ms, m, h)", n)
}

// defaultVars feeds the config package's defaults into the flag defaults and help.
func defaultVars() kong.Vars {
	x, n := config.DefaultExit(), config.DefaultEntry()
	return kong.Vars{
		"exit_listen":       x.Listen,
		"entry_listen":      n.Listen,
		"dial_timeout":      x.DialTimeout.String(),
		"handshake_timeout": x.HandshakeTimeout.String(),
		"max_handshakes":    strconv.Itoa(x.MaxHandshakes),
		"max_streams":       strconv.Itoa(x.MaxStreams),
		"handshake_rate":    strconv.FormatFloat(x.HandshakeRate, 'g', -1, 64),
		"keepalive":         x.KeepAlive.String(),
		"window":            strconv.FormatUint(uint64(x.Window), 10),
		"drain_timeout":     x.DrainTimeout.String(),
		"resume_window":     x.ResumeWindow.String(),
		"key_bits":          strconv.Itoa(handshake.DefaultKeyBits),
	}
}

// configFlag is --config: a YAML file keyed by flag name. Setting it (by flag or TUNNEL_CONFIG)
// adds the file as a resolver before the other flags are resolved.
type configFlag string

// BeforeResolve loads the file, rejects keys that name no flag, and adds its resolver.
func (c configFlag) BeforeResolve(k *kong.Kong, kctx *kong.Context, trace *kong.Path) error {
	path := kong.ExpandPath(string(kctx.FlagValue(trace.Flag).(configFlag)))
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config %s: %w", path, errors.Unwrap(err))
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("--config %s: not YAML: %w", path, err)
	}
	if err := checkConfigKeys(k.Model.Node, doc); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	r, err := yamlResolver(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	kctx.AddResolver(r)
	return nil
}

// checkConfigKeys accepts, at the top level, any flag name of any command and, as a map, any
// command name; under a command, that command's flags and the global ones. A duration must be
// written with its unit: YAML reads "5" as a number, which kong would take as nanoseconds.
func checkConfigKeys(app *kong.Node, doc map[string]any) error {
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
	for _, cmd := range app.Children {
		cmds[cmd.Name] = cmd
		maps.Copy(all, flags(cmd))
	}
	for key, v := range doc {
		if cmd, ok := cmds[key]; ok {
			section, ok := v.(map[string]any)
			if !ok {
				return fmt.Errorf("%q must be a map of %s's flag names to values", key, key)
			}
			own := flags(cmd)
			for k, v := range section {
				f := own[k]
				if f == nil {
					return fmt.Errorf("unknown key %q under %q: keys are %s's flag names without the dashes in front, e.g. listen", k, key, key)
				}
				if err := checkConfigValue(f, v); err != nil {
					return fmt.Errorf("%s: %s: %w", key, k, err)
				}
			}
			continue
		}
		f := all[key]
		if f == nil {
			return fmt.Errorf("unknown key %q: keys are flag names without the dashes in front, e.g. listen, peer-key", key)
		}
		if err := checkConfigValue(f, v); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
	}
	return nil
}

// checkConfigValue rejects a number given for a duration flag.
func checkConfigValue(f *kong.Flag, v any) error {
	if !f.Target.IsValid() || f.Target.Type() != reflect.TypeFor[time.Duration]() {
		return nil
	}
	switch v.(type) {
	case int, int64, uint64, float64:
		return fmt.Errorf("%v: %w", v, errNoUnit(fmt.Sprint(v)))
	}
	return nil
}

// yamlResolver wraps kong-yaml's resolver. A key may be a flag name at the top level ("listen")
// or under its command ("exit: {listen: ...}"), the latter winning. A flag whose TUNNEL_*
// variable is set ignores the file, so that the environment beats the file (kong alone lets
// resolvers win over the environment).
func yamlResolver(r io.Reader) (kong.Resolver, error) {
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
		if v != nil || err != nil {
			return v, err
		}
		return inner.Resolve(kctx, &kong.Path{App: kctx.Model}, flag)
	}), nil
}

// newLogger builds the zerolog logger on w, and says whether it writes JSON. Format "auto" is
// console when w is a terminal and JSON otherwise.
func newLogger(w io.Writer, level, format string) (log zerolog.Logger, jsonLogs bool, err error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Nop(), false, usagef("--log-level %q: give debug, info, warn or error", level)
	}
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = isatty.IsTerminal(f.Fd())
	}
	jsonLogs = !(format == "console" || (format == "auto" && tty))
	if !jsonLogs {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339, NoColor: !tty}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), jsonLogs, nil
}
