package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tunnel-dev/tunnel/config"
)

// TestSandboxPolicy: the entry's policy reads the directories its key settings and config file
// name (a directory setting as itself), where a key file links to at start, binds its TCP
// listen and status ports (not port 0), connects to its exits' ports and 53, and may remove its
// UNIX socket files.
func TestSandboxPolicy(t *testing.T) {
	dir := t.TempDir()
	keys, peers, other := filepath.Join(dir, "keys"), filepath.Join(dir, "peers"), filepath.Join(dir, "other")
	for _, d := range []string{keys, peers, other} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(other, "entry.key"), "k")
	if err := os.Symlink(filepath.Join(other, "entry.key"), filepath.Join(keys, "entry.key")); err != nil {
		t.Fatal(err)
	}
	s := config.Entry{
		Key: filepath.Join(keys, "entry.key"), PeerKey: peers, StatusAddr: "127.0.0.1:0",
		Peers:     []string{"exit-a:7000", "exit-b:7001=" + filepath.Join(peers, "b.pub")},
		Listen:    "127.0.0.1:5000",
		Listeners: []config.EntryListener{{Addr: "unix:/run/app/db.sock", Service: "db"}},
	}
	p := entrySandbox(s, filepath.Join(dir, "entry.yaml"))
	for _, d := range []string{keys, peers, other, dir} {
		if !slices.Contains(p.ReadDirs, d) {
			t.Errorf("ReadDirs %v lacks %s", p.ReadDirs, d)
		}
	}
	if !slices.Equal(p.SocketDirs, []string{"/run/app"}) {
		t.Errorf("SocketDirs %v, want [/run/app]", p.SocketDirs)
	}
	if !slices.Equal(p.BindTCP, []uint16{5000}) {
		t.Errorf("BindTCP %v, want [5000]", p.BindTCP)
	}
	if !slices.Equal(p.ConnectTCP, []uint16{53, 7000, 7001}) {
		t.Errorf("ConnectTCP %v, want [53 7000 7001]", p.ConnectTCP)
	}
	if !slices.Contains(p.ReadFiles, "/etc/resolv.conf") || slices.Contains(p.ReadDirs, "/etc") {
		t.Errorf("ReadFiles %v, ReadDirs %v: want /etc/resolv.conf, and not /etc", p.ReadFiles, p.ReadDirs)
	}
}
