package container

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestDockerfileDefaults: `docker build .` with no build arguments must
// work on a fresh machine that reaches a public registry, so the
// Dockerfile's default base images are public ones: the build image is the
// official Go image of the version go.mod names, and the runtime image
// scratch (built in) or a registry path. An image that only these tests
// make (tunnel-build-base:local) is passed as a build argument instead.
func TestDockerfileDefaults(t *testing.T) {
	root := harness.ModuleRoot(t)
	dockerfile, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if goVersion == nil {
		t.Fatal("go.mod has no go line")
	}
	defaults := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^ARG (\w+)=(\S+)`).FindAllSubmatch(dockerfile, -1) {
		defaults[string(m[1])] = string(m[2])
	}
	if got, want := defaults["BUILD_IMAGE"], "golang:"+string(goVersion[1]); got != want {
		t.Errorf("Dockerfile: ARG BUILD_IMAGE=%s, want the public Go image of go.mod's version, %s", got, want)
	}
	rt := defaults["RUNTIME_IMAGE"]
	if rt != "scratch" && (strings.HasSuffix(rt, ":local") || !strings.Contains(rt, "/")) {
		t.Errorf("Dockerfile: ARG RUNTIME_IMAGE=%s, want scratch or a public image", rt)
	}
	for name, v := range defaults {
		if strings.HasSuffix(v, ":local") {
			t.Errorf("Dockerfile: ARG %s=%s names an image that only the tests make", name, v)
		}
	}
}
