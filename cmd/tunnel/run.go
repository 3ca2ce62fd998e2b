package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/alecthomas/kong"
	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
	"github.com/willabides/kongplete"

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
	Completion  completionCmd  `cmd:"" help:"Print the shell code that completes tunnel's commands and flags: add eval \"$(tunnel completion bash)\" to ~/.bashrc (zsh: ~/.zshrc; fish: tunnel completion fish | source)."`
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
	config *configSource // the --config file, if any: its path, and where it sets each flag
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
// else plain text starting "tunnel: ". Errors in the flags and the config file, found before
// the log format is known, take the format that --log-format or TUNNEL_LOG_FORMAT on their own
// ask for (JSON, by default, when stderr is not a terminal). An error about a setting that came
// from the --config file names the file, the line and the key there. An agent receives a value
// on reload per SIGHUP (nil: never).
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
	src := &configSource{}
	c, kctx, err := parse(args, stdout, stderr, src)
	if err != nil {
		err = src.locate(err)
		log, jsonLogs, lerr := newLogger(stderr, "info", earlyLogFormat(args))
		if lerr != nil {
			jsonLogs = false
		}
		if !errors.As(err, new(*configError)) {
			err = fmt.Errorf("%w (see tunnel --help)", err)
		}
		fatal(log, jsonLogs, stderr, exitUsage, err)
		return exitUsage
	}
	log, jsonLogs, err := newLogger(stderr, c.LogLevel, c.LogFormat)
	if err != nil {
		fmt.Fprintf(stderr, "tunnel: %v\n", err)
		return exitUsage
	}
	err = kctx.Run(&env{ctx: ctx, reload: reload, build: thisBuild(), stdout: stdout, stderr: stderr, log: log, config: src})
	if err == nil {
		return exitOK
	}
	code = exitRuntime
	if errors.As(err, new(usageError)) {
		code = exitUsage
	}
	fatal(log, jsonLogs, stderr, code, src.locate(err))
	return code
}

// fatal writes err, which ends the command with code: one more log line when logs are JSON, so
// that whatever collects the logs sees why the process ended, else one line of text. A
// *configError's file and line are fields of the JSON line too.
func fatal(log zerolog.Logger, jsonLogs bool, stderr io.Writer, code int, err error) {
	if !jsonLogs {
		fmt.Fprintln(stderr, errorLine(err))
		return
	}
	ev := log.WithLevel(zerolog.FatalLevel).Int("exit_code", code)
	if ce := (*configError)(nil); errors.As(err, &ce) {
		ev = ev.Str("config_file", ce.path)
		if ce.line > 0 {
			ev = ev.Int("line", ce.line)
		}
	}
	ev.Msg(jsonMessage(err))
}

// jsonMessage is err as a JSON log line's message: without the program's name, which an error
// from the tunnel package starts with (the line is the program's already).
func jsonMessage(err error) string {
	msg := strings.TrimPrefix(err.Error(), "tunnel: ")
	return strings.ReplaceAll(msg, ": tunnel: ", ": ")
}

// earlyLogFormat is the log format that args (--log-format X, --log-format=X) or else
// TUNNEL_LOG_FORMAT ask for, for an error found while the flags are parsed: "auto" when
// neither does, plain text when the value is not one of the formats.
func earlyLogFormat(args []string) string {
	format, given := os.LookupEnv("TUNNEL_LOG_FORMAT")
	for i, a := range args {
		if a == "--" {
			break
		}
		if v, ok := strings.CutPrefix(a, "--log-format="); ok {
			format, given = v, true
		} else if a == "--log-format" && i+1 < len(args) {
			format, given = args[i+1], true
		}
	}
	switch {
	case format == "json" || format == "console" || format == "auto":
		return format
	case given:
		return "console" // a format this build does not know: the error says so, in plain text
	}
	return "auto"
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
func parse(args []string, stdout, stderr io.Writer, src *configSource) (*cli, *kong.Context, error) {
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
		kong.Bind(src),
	)
	if err != nil {
		return nil, nil, err
	}
	// The shell asks for completions by running the binary with COMP_LINE set: answer and exit.
	kongplete.Complete(parser)
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
		"sandbox_help":      sandboxHelp,
		"watch_help":        watchHelp,
		"watch_interval":    defaultWatchInterval.String(),
	}
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
