package main

// Watching the key files: every --watch-interval an agent reads the files
// its key settings name (a directory's files, as a reload reads them) and
// its --config file, and when what they hold has changed since the last
// look, it reloads as on SIGHUP. It compares contents, read through links,
// so a file replaced by mv, rewritten in place, or swapped by a
// Kubernetes Secret's ..data link counts as changed, and a touch does not.
// Polling, not inotify: the ..data swap of a Secret volume changes a link
// two levels up from the files named, and polling sees it the same way on
// every file system.

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// watchHelp is the --watch-interval flag's help, the same for both agents.
const watchHelp = "How often to look at the key files (and the --config file) for new contents, and reload as on SIGHUP when they have changed (a file replaced, or a Kubernetes Secret updated). 0 turns it off."

// defaultWatchInterval is --watch-interval's default: a rotated key takes effect within it.
const defaultWatchInterval = 5 * time.Second

// fileSums maps each file watched to the hash of its contents, or of the error reading it.
type fileSums map[string][sha256.Size]byte

// sumFiles reads paths: a file's contents, a directory's files (not those whose names start
// with a dot, such as a Secret volume's ..data), through links.
func sumFiles(paths []string) fileSums {
	sums := fileSums{}
	add := func(p string) {
		b, err := os.ReadFile(p)
		if err != nil {
			b = []byte("error: " + err.Error())
		}
		sums[p] = sha256.Sum256(b)
	}
	for _, p := range paths {
		if p == "" {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil || !fi.IsDir() {
			add(p)
			continue
		}
		ents, err := os.ReadDir(p)
		if err != nil {
			add(p) // the error, as the directory's contents
			continue
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), ".") {
				add(filepath.Join(p, e.Name()))
			}
		}
	}
	return sums
}

// changedFiles lists the files whose sums differ between before and after, added and removed
// ones included, in order.
func changedFiles(before, after fileSums) []string {
	var out []string
	for p, s := range after {
		if b, ok := before[p]; !ok || b != s {
			out = append(out, p)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// fileWatch looks at files every interval, for the goroutine that reloads: tick fires when it
// is time to look, changed looks and says what changed since the last look (or reset).
type fileWatch struct {
	paths  []string
	ticker *time.Ticker // nil: not watching
	last   fileSums
}

// newFileWatch starts watching paths every interval; interval 0 watches nothing (tick never
// fires).
func newFileWatch(paths []string, interval time.Duration) *fileWatch {
	w := &fileWatch{paths: paths}
	if interval > 0 {
		w.ticker = time.NewTicker(interval)
		w.last = sumFiles(paths)
	}
	return w
}

// tick fires when it is time to look.
func (w *fileWatch) tick() <-chan time.Time {
	if w.ticker == nil {
		return nil
	}
	return w.ticker.C
}

// changed reads the files and returns those that changed since the last look.
func (w *fileWatch) changed() []string {
	now := sumFiles(w.paths)
	c := changedFiles(w.last, now)
	w.last = now
	return c
}

// reset takes the files as they are now as the last look, before a reload that SIGHUP asked for.
func (w *fileWatch) reset() {
	if w.ticker != nil {
		w.last = sumFiles(w.paths)
	}
}

// stop stops the ticker.
func (w *fileWatch) stop() {
	if w.ticker != nil {
		w.ticker.Stop()
	}
}
