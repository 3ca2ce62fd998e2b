package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is this build's version when the linker sets it:
//
//	go build -ldflags "-X main.version=v1.2.3" ./cmd/tunnel
//
// Only builds that leave the Go toolchain nothing to stamp need it: the
// Dockerfile's, whose context has no .git. Otherwise the build info says
// it (a module version, or the pseudo-version that go build derives from
// the commit). When set, it wins: whoever passes it means it. Nothing
// else writes it.
var version string

// build is what the binary knows of its own build.
type build struct {
	Version   string // v1.2.3, a pseudo-version, or "(devel)" when no version was recorded
	Revision  string // VCS commit, empty when the build recorded none
	Time      string // commit time (RFC 3339), empty when unknown
	Modified  bool   // the commit had uncommitted changes on top
	GoVersion string // the toolchain that built the binary
}

// thisBuild reads the build info of the running binary.
func thisBuild() build {
	bi, _ := debug.ReadBuildInfo()
	return newBuild(bi, version)
}

// newBuild makes a build from bi (nil when the binary has none) and the
// linker-set version linked (empty when not set).
func newBuild(bi *debug.BuildInfo, linked string) build {
	b := build{Version: "(devel)", GoVersion: runtime.Version()}
	if bi != nil {
		if bi.Main.Version != "" {
			b.Version = bi.Main.Version
		}
		if bi.GoVersion != "" {
			b.GoVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.time":
				b.Time = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if linked != "" {
		b.Version = linked
	}
	return b
}

// String is the line `tunnel version` prints, e.g.
// "tunnel v1.2.3 (commit 0123456789ab 2026-01-02T03:04:05Z, modified) go1.26.8 linux/amd64".
func (b build) String() string {
	v := "tunnel " + b.Version
	if b.Revision != "" {
		rev := b.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		v += " (commit " + rev
		if b.Time != "" {
			v += " " + b.Time
		}
		if b.Modified {
			v += ", modified"
		}
		v += ")"
	}
	return v + " " + b.GoVersion + " " + runtime.GOOS + "/" + runtime.GOARCH
}

type versionCmd struct{}

// Run prints the version line, from the binary's build info.
func (c *versionCmd) Run(e *env) error {
	fmt.Fprintln(e.stdout, thisBuild())
	return nil
}
