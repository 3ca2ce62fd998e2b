package main

// Shell completion and the effective configuration.
//
// tunnel completion bash|zsh|fish prints what to add to the shell's
// startup file; the shell then runs this binary with COMP_LINE set for
// each completion, which parse answers through kongplete (from kong's
// model of the commands and flags, enum values included) before anything
// else runs.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/alecthomas/kong"
	"gopkg.in/yaml.v3"
)

// completionScripts are what each shell needs to ask the binary for completions, as
// kongplete's install-completions writes them (${bin}: the binary's absolute path).
var completionScripts = map[string]string{
	"bash": "complete -C ${bin} tunnel\n",
	"zsh":  "autoload -U +X bashcompinit && bashcompinit\ncomplete -C ${bin} tunnel\n",
	"fish": `function __complete_tunnel
    set -lx COMP_LINE (commandline -cp)
    test -z (commandline -ct)
    and set COMP_LINE "$COMP_LINE "
    ${bin}
end
complete -f -c tunnel -a "(__complete_tunnel)"
`,
}

type completionCmd struct {
	Shell string `arg:"" enum:"bash,zsh,fish" help:"The shell: bash, zsh or fish."`
}

// Run prints the completion script for c.Shell.
func (c *completionCmd) Run(e *env) error {
	bin, err := os.Executable()
	if err == nil {
		bin, err = filepath.Abs(bin)
	}
	if err != nil {
		return fmt.Errorf("completion: cannot find this binary's path: %w", err)
	}
	fmt.Fprint(e.stdout, strings.ReplaceAll(completionScripts[c.Shell], "${bin}", bin))
	return nil
}

// printConfig writes the settings that kctx resolved for its command (flags, TUNNEL_*
// variables, the --config file and the defaults) as a --config file would hold them: under
// the command's name, keyed by flag name. Key files appear as their paths; no key's contents
// are read. Global flags (log-level, log-format) are at the top level.
func printConfig(e *env, kctx *kong.Context) error {
	cmd := kctx.Selected()
	skip := []string{"help", "version", "config", "print-config"}
	section := map[string]any{}
	top := map[string]any{}
	for _, group := range kctx.Flags() {
		if slices.Contains(skip, group.Name) || !group.Target.IsValid() {
			continue
		}
		v := group.Target.Interface()
		switch x := v.(type) {
		case time.Duration:
			v = x.String()
		case socketMode:
			if x == 0 {
				continue
			}
			v = fmt.Sprintf("%04o", uint32(x))
		case exitServices:
			if len(x) == 0 {
				continue
			}
			m := map[string]any{}
			for name, s := range x {
				svc := map[string]any{"forward": s.Forward}
				if keys, given, _ := s.allowKeys(); given {
					svc["allow"] = keys
				}
				if s.ProxyProtocol {
					svc["proxy-protocol"] = true
				}
				m[name] = svc
			}
			v = m
		case entryServices:
			if len(x) == 0 {
				continue
			}
			var l []map[string]any
			for _, s := range x {
				svc := map[string]any{"listen": s.Listen}
				if s.Service != "" {
					svc["service"] = s.Service
				}
				if s.Mode != 0 {
					svc["mode"] = fmt.Sprintf("%04o", uint32(s.Mode))
				}
				l = append(l, svc)
			}
			v = l
		case []string:
			if len(x) == 0 {
				continue
			}
		case string:
			if x == "" {
				continue
			}
		}
		if slices.Contains(cmd.Flags, group) {
			section[group.Name] = v
		} else {
			top[group.Name] = v
		}
	}
	top[cmd.Name] = section
	out, err := yaml.Marshal(top)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "# tunnel %s: the settings in effect (flags, TUNNEL_* variables, --config file, defaults)\n%s", cmd.Name, out)
	return nil
}
