package main

import (
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

// TestNewBuild: the version comes from the build info, a linker-set version wins, and the VCS
// settings show in the version line.
func TestNewBuild(t *testing.T) {
	vcs := []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
		{Key: "vcs.time", Value: "2026-01-02T03:04:05Z"},
		{Key: "vcs.modified", Value: "true"},
	}
	cases := []struct {
		name    string
		bi      *debug.BuildInfo
		linked  string
		version string
		line    string // a part of String()
	}{
		{"no build info", nil, "", "(devel)", "tunnel (devel) go"},
		{"devel, no vcs", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}}, "",
			"(devel)", "tunnel (devel) go1.26.8 "},
		{"module version", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}}, "",
			"v1.2.3", "tunnel v1.2.3 go1.26.8 "},
		{"vcs", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-20260102030405-0123456789ab+dirty"}, Settings: vcs}, "",
			"v0.0.0-20260102030405-0123456789ab+dirty", "(commit 0123456789ab 2026-01-02T03:04:05Z, modified) go1.26.8"},
		{"linked wins", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}}, "v2.0.0-rc1",
			"v2.0.0-rc1", "tunnel v2.0.0-rc1 go1.26.8 "},
	}
	for _, tc := range cases {
		b := newBuild(tc.bi, tc.linked)
		if b.Version != tc.version {
			t.Errorf("%s: version %q, want %q", tc.name, b.Version, tc.version)
		}
		if !strings.Contains(b.String(), tc.line) {
			t.Errorf("%s: version line %q lacks %q", tc.name, b.String(), tc.line)
		}
	}
}

// TestVersionAndHelp: --version, version, help and help COMMAND all exit 0 and print to stdout.
func TestVersionAndHelp(t *testing.T) {
	want := thisBuild().String() + "\n"
	for _, args := range [][]string{{"--version"}, {"version"}} {
		code, out, errs := runCmd(t, args...)
		if code != exitOK || out != want || errs != "" {
			t.Errorf("%q: exit code %d, stdout %q, stderr %q; want 0, %q, nothing", args, code, out, errs, want)
		}
	}
	_, usage, _ := runCmd(t, "--help")
	code, out, _ := runCmd(t, "help")
	if code != exitOK || out != usage {
		t.Errorf("help: exit code %d, stdout %q; want 0 and what --help prints", code, out)
	}
	_, exitUsageText, _ := runCmd(t, "exit", "--help")
	code, out, _ = runCmd(t, "help", "exit")
	if code != exitOK || out != exitUsageText || !strings.Contains(out, "--forward") {
		t.Errorf("help exit: exit code %d, stdout %q; want 0 and what exit --help prints", code, out)
	}
	code, _, errs := runCmd(t, "--log-format", "console", "help", "nope")
	if code != exitUsage || !strings.Contains(errs, "help nope") {
		t.Errorf("help nope: exit code %d, stderr %q; want %d and a line naming it", code, errs, exitUsage)
	}
	// TUNNEL_VERSION (a common variable for an image tag) does not turn commands into --version.
	t.Setenv("TUNNEL_VERSION", "1")
	if code, out, _ := runCmd(t, "fingerprint", "--help"); code != exitOK || !strings.Contains(out, "Usage: tunnel fingerprint") {
		t.Errorf("with TUNNEL_VERSION set, fingerprint --help printed %q", out)
	}
}

// TestLinkedVersion builds the binary as the Dockerfile does, with the version given to the
// linker, and checks that --version and version print it.
func TestLinkedVersion(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the binary: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "tunnel")
	build := exec.Command(goTool, "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -X main.version=v9.8.7-test", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, arg := range []string{"--version", "version"} {
		out, err := exec.Command(bin, arg).Output()
		if err != nil || !strings.HasPrefix(string(out), "tunnel v9.8.7-test go1.") {
			t.Errorf("tunnel %s: %q, %v; want it to start \"tunnel v9.8.7-test go1.\"", arg, out, err)
		}
	}
}
