package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// secretDir lays out dir as a Kubernetes Secret volume does: the files
// (name -> contents) in a timestamped directory, ..data a link to it, and
// each name a link to ..data/name.
func secretDir(t *testing.T, dir, version string, files map[string]string) {
	t.Helper()
	v := filepath.Join(dir, "..2026_"+version)
	if err := os.Mkdir(v, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, from := range files {
		copyFile(t, from, filepath.Join(v, name), 0o644)
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The swap: a new link, renamed over ..data in one step.
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(v), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// TestKeyFilesWatched rotates the exit's authorized key the way a
// Kubernetes Secret update does, by swapping the ..data link of its
// --authorized-keys directory, and sends no SIGHUP: the exit sees the new
// contents within its default --watch-interval (5 s), reloads, and the
// entry whose key is now authorized gets its session.
func TestKeyFilesWatched(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	backend := harness.StartHashEcho(t)
	other := harness.NewIdentity(t, r.Bin, "other")
	authDir := t.TempDir()
	secretDir(t, authDir, "01", map[string]string{"app.pub": other.Pub})
	exit := r.StartExit(t, backend.Addr(), harness.Options{Args: []string{"--authorized-keys", authDir}})
	exit.WaitMessage(t, 1, 30*time.Second, "exit ready")
	entry := r.StartEntry(t, exit.Addr, harness.Options{})
	entry.WaitLine(t, 1, 30*time.Second, "a refused handshake", harness.Contains("cannot establish a session"))

	swapped := time.Now()
	secretDir(t, authDir, "02", map[string]string{"app.pub": r.Entry.Pub})
	l := exit.WaitMessage(t, 1, 15*time.Second, "keys reloaded")
	took := time.Since(swapped)
	if !strings.Contains(l.Raw, r.Entry.Fingerprint) || !strings.Contains(l.Raw, other.Fingerprint) {
		t.Errorf("reload after the swap: %s, want %s added and %s removed", l.Raw, r.Entry.Fingerprint, other.Fingerprint)
	}
	if exit.Count(harness.MessageIs("a watched file changed; reloading")) != 1 {
		t.Errorf("the exit did not say that a watched file changed")
	}
	t.Logf("the exit reloaded %v after the swap", took.Round(time.Millisecond))
	entry.WaitMessage(t, 1, 60*time.Second, "session established")
	if err := roundTrip(entry.Addr, 1); err != nil {
		t.Fatal(err)
	}
	// Nothing changed since: no second reload.
	time.Sleep(6 * time.Second)
	if n := exit.Count(harness.Contains("reload")); n != 2 {
		t.Errorf("%d reload lines, want the two of the one reload", n)
	}
}
