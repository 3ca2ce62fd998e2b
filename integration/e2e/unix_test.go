package e2e

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestUnixSocketPostgres: psql connects to the entry's UNIX socket, and
// the exit forwards to PostgreSQL's own UNIX socket, which the server
// shows by seeing no client address. The entry replaces a stale socket
// file left at its path, sets --listen-mode on the socket, refuses to take
// the path over from a live entry or a regular file, and removes the
// socket when it stops.
func TestUnixSocketPostgres(t *testing.T) {
	t.Parallel()
	psql, err := exec.LookPath("psql")
	harness.RequireOrSkip(t, "psql (Debian package postgresql-client)", err == nil)
	r := harness.NewRig(t)
	_, pgSocket := harness.StartPostgresUnix(t)

	_, xaddrs, _ := startAgent(t, r.Bin, 1, "exit", "--listen", "127.0.0.1:0",
		"--forward", "db=unix:"+pgSocket,
		"--key", r.Exit.Key, "--authorized-keys", r.Entry.Pub, "--status-addr", "127.0.0.1:0")

	// A socket file left behind by an entry that was killed: nobody listens.
	dir := t.TempDir()
	sock := filepath.Join(dir, ".s.PGSQL.5432")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()

	entryArgs := func(listen string) []string {
		return []string{"entry", "--peer", xaddrs[""], "--key", r.Entry.Key, "--peer-key", r.Exit.Pub,
			"--listen", listen, "--listen-mode", "0660"}
	}
	// At debug: the line that ends a connection is checked below.
	entry, addrs, _ := startAgent(t, r.Bin, 1, append(entryArgs("unix:"+sock+"=db"), "--status-addr", "127.0.0.1:0", "--log-level", "debug")...)
	if addrs["db"] != sock {
		t.Errorf("the entry's listening line says %q, want the socket %s", addrs["db"], sock)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("the entry's socket: %v, %v; want a socket with mode 0660", fi.Mode(), err)
	}

	cmd := exec.Command(psql, "-XAt", "-v", "ON_ERROR_STOP=1", "-c",
		"select coalesce(host(inet_client_addr()), 'unix socket'), 6*7, count(*) from generate_series(1, 100000)")
	cmd.Env = append(os.Environ(), "PGHOST="+dir, "PGPORT=5432", "PGUSER=postgres",
		"PGDATABASE=postgres", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=30", "PGOPTIONS=", "PGPASSWORD=")
	out, err := cmd.CombinedOutput()
	if got := strings.TrimSpace(string(out)); err != nil || got != "unix socket|42|100000" {
		t.Fatalf("psql through the entry's UNIX socket: %v: %q; want %q (the server sees a UNIX socket client)", err, got, "unix socket|42|100000")
	}
	l := entry.WaitMessage(t, 1, 30*time.Second, "connection closed")
	if l.String("service") != "db" || l.String("origin") != "" {
		t.Errorf("the entry's connection line: service %q, origin %q; want db and no origin", l.String("service"), l.String("origin"))
	}
	if n := entry.Count(harness.Contains("reachable from the network")); n != 0 {
		t.Errorf("the entry warned %d times that its UNIX socket is reachable from the network", n)
	}

	// A second entry on the same path finds the first listening there.
	_, stderr, code := harness.Run(t, r.Bin, 30*time.Second, entryArgs("unix:"+sock)...)
	if code != 1 || !strings.Contains(stderr, "another process is listening on "+sock) {
		t.Errorf("a second entry on the live socket: exit code %d, stderr %q; want 1 and 'another process is listening on %s'", code, stderr, sock)
	}
	// Nor does it replace a regular file.
	file := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(file, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = harness.Run(t, r.Bin, 30*time.Second, entryArgs("unix:"+file)...)
	if b, _ := os.ReadFile(file); code != 1 || !strings.Contains(stderr, "is not a socket (a regular file)") || string(b) != "keep me" {
		t.Errorf("an entry on a regular file: exit code %d, stderr %q, file %q; want 1, 'is not a socket', the file intact", code, stderr, b)
	}

	if code := entry.Stop(t, 30*time.Second); code != 0 {
		t.Errorf("entry exit code %d after SIGTERM", code)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the entry's socket file is still there after it stopped: %v", err)
	}
}
