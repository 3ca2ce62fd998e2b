// Package netns runs the real tunnel binary across Linux network
// namespaces, so that the hop between the agents is a real link that can be
// captured, slowed, made lossy, cut and restarted:
//
//	app --veth-- entry --veth-- exit --veth-- db
//
// Each box is a namespace made by the test and removed by its cleanup. No
// namespace forwards packets and no routes are added beyond the connected
// ones, so every hop only reaches its neighbour: app can talk to db only
// through the tunnel. Every process, agents, clients and backends alike,
// runs inside a namespace through "ip netns exec"; the test process in the
// root namespace only configures namespaces and reads the processes'
// output, and never dials a namespace address itself. Clients, backends and
// the delaying relay are this test binary run again in helper mode (see
// helper_test.go).
//
// The tests need root, iproute2, nft, tc and tcpdump. Without them they
// skip, except in CI (CI=true), where they fail.
package netns

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode, os.Args[1:]))
	}
	harness.Main(m)
}

// Addresses: one /24 per link. Ports are fixed: every run has its own
// namespaces, so nothing else can hold them.
const (
	appIP       = "10.77.1.1" // app, on the link to entry
	entryAppIP  = "10.77.1.2" // entry, on the link to app
	entryExitIP = "10.77.2.1" // entry, on the link to exit
	exitEntryIP = "10.77.2.2" // exit, on the link to entry
	exitDBIP    = "10.77.3.1" // exit, on the link to db
	dbIP        = "10.77.3.2" // db, on the link to exit

	entryAddr   = entryAppIP + ":5000"  // the entry agent, for apps
	exitAddr    = exitEntryIP + ":7000" // the exit agent
	relayAddr   = exitEntryIP + ":7001" // the delaying relay in front of the exit
	backendAddr = dbIP + ":9000"        // the hash-echo backend
)

// Interface names. Each lives in its own namespace, so the same names serve
// every run without clashing.
const (
	ifAppToEntry  = "veth-entry" // in app
	ifEntryToApp  = "veth-app"   // in entry
	ifEntryToExit = "veth-exit"  // in entry
	ifExitToEntry = "veth-entry" // in exit
	ifExitToDB    = "veth-db"    // in exit
	ifDBToExit    = "veth-exit"  // in db
)

// nsPrefix starts the name of every namespace these tests make:
// nsPrefix + pid + "-" + random + "-" + role. The pid lets a later run
// remove the leftovers of a run that was killed.
const nsPrefix = "tnltest-"

// topology is the four namespaces of one test.
type topology struct {
	app, entry, exit, db string
}

func (n *topology) all() []string { return []string{n.app, n.entry, n.exit, n.db} }

// requireNetns skips (fails in CI) unless the test can make namespaces.
func requireNetns(t *testing.T) {
	t.Helper()
	harness.RequireOrSkip(t, "root (network namespaces need it)", os.Geteuid() == 0)
	requireTool(t, "ip", "iproute2")
}

// requireTool skips (fails in CI) unless the command name is installed.
func requireTool(t *testing.T, name, pkg string) {
	t.Helper()
	_, err := exec.LookPath(name)
	harness.RequireOrSkip(t, fmt.Sprintf("the %s command (Debian package %s)", name, pkg), err == nil)
}

// newTopology makes the namespaces and links of one test and registers
// their removal, which first kills any process still inside them.
func newTopology(t *testing.T) *topology {
	t.Helper()
	requireNetns(t)
	removeStale(t)
	base := fmt.Sprintf("%s%d-%s-", nsPrefix, os.Getpid(), randHex(3))
	n := &topology{app: base + "app", entry: base + "entry", exit: base + "exit", db: base + "db"}
	for _, ns := range n.all() {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			harness.RequireOrSkip(t, fmt.Sprintf("network namespaces (ip netns add %s: %v: %s)",
				ns, err, bytes.TrimSpace(out)), false)
		}
		t.Cleanup(func() { deleteNamespace(t, ns) })
		mustRun(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	link(t, n.app, ifAppToEntry, appIP, n.entry, ifEntryToApp, entryAppIP)
	link(t, n.entry, ifEntryToExit, entryExitIP, n.exit, ifExitToEntry, exitEntryIP)
	// A veth hands TCP super-packets of up to 64 KiB across as one; on the
	// entry-exit link every packet is to be one MTU-sized segment, as on a
	// wire, so that a drop there loses one segment and captures show the
	// segments the kernel sends.
	mustRun(t, "ip", "-n", n.entry, "link", "set", ifEntryToExit, "gso_max_segs", "1")
	mustRun(t, "ip", "-n", n.exit, "link", "set", ifExitToEntry, "gso_max_segs", "1")
	link(t, n.exit, ifExitToDB, exitDBIP, n.db, ifDBToExit, dbIP)
	return n
}

// link joins namespaces a and b with a veth pair and addresses both ends.
func link(t *testing.T, nsA, ifA, ipA, nsB, ifB, ipB string) {
	t.Helper()
	mustRun(t, "ip", "-n", nsA, "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", nsB)
	mustRun(t, "ip", "-n", nsA, "addr", "add", ipA+"/24", "dev", ifA)
	mustRun(t, "ip", "-n", nsB, "addr", "add", ipB+"/24", "dev", ifB)
	mustRun(t, "ip", "-n", nsA, "link", "set", ifA, "up")
	mustRun(t, "ip", "-n", nsB, "link", "set", ifB, "up")
}

// deleteNamespace kills what still runs in ns (only processes this test
// started can be there) and removes it; the veth ends inside go with it.
func deleteNamespace(t testing.TB, ns string) {
	for range 50 {
		out, err := exec.Command("ip", "netns", "pids", ns).Output()
		pids := strings.Fields(string(out))
		if err != nil || len(pids) == 0 {
			break
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
		t.Errorf("removing namespace %s: %v: %s", ns, err, bytes.TrimSpace(out))
	}
}

// removeStale removes the namespaces of earlier runs whose test process no
// longer exists (a run killed before its cleanup).
func removeStale(t testing.TB) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], nsPrefix) {
			continue
		}
		name := f[0]
		pidText, _, _ := strings.Cut(strings.TrimPrefix(name, nsPrefix), "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if runAlive(pid) {
			continue
		}
		t.Logf("removing namespace %s left by an earlier run (pid %d is gone)", name, pid)
		deleteNamespace(t, name)
	}
}

// runAlive reports whether pid is a live process of a test binary like
// this one (not a zombie, not an unrelated process that reuses the pid).
func runAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "pid (comm) state ..."; comm may hold spaces and parentheses.
	open, end := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || end < open || end+2 >= len(stat) || stat[end+2] == 'Z' {
		return false
	}
	exe, err := os.Executable()
	if err != nil {
		return true
	}
	self := filepath.Base(exe)
	if len(self) > 15 { // the kernel keeps 15 bytes of a command name
		self = self[:15]
	}
	return string(stat[open+1:end]) == self
}

// mustRun runs a command to completion and fails the test if it fails.
func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// nsRun runs a command inside namespace ns; see mustRun.
func nsRun(t testing.TB, ns, name string, args ...string) string {
	t.Helper()
	return mustRun(t, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// nft loads an nft script inside namespace ns.
func nft(t testing.TB, ns, script string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s\nscript:\n%s", ns, err, out, script)
	}
}

var counterRE = regexp.MustCompile(`counter packets (\d+) bytes (\d+)`)

// nftCounters returns the packet counts of the counters of inet table
// table in ns, in the order they are listed.
func nftCounters(t testing.TB, ns, table string) []int64 {
	t.Helper()
	out := nsRun(t, ns, "nft", "list", "table", "inet", table)
	var counts []int64
	for _, m := range counterRE.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		counts = append(counts, n)
	}
	return counts
}

// startExit starts the exit agent of rig r in the exit namespace on
// exitAddr, forwarding to the backend in db, and waits until it listens.
func (n *topology) startExit(t *testing.T, r *harness.Rig, extra ...string) *harness.Agent {
	t.Helper()
	p := r.StartExit(t, backendAddr, harness.Options{Listen: exitAddr, Args: extra,
		Prefix: []string{"ip", "netns", "exec", n.exit}})
	if p.Addr != exitAddr {
		t.Fatalf("exit listens on %s, want %s", p.Addr, exitAddr)
	}
	return p
}

// startEntry starts the entry agent of rig r in the entry namespace on
// entryAddr, dialing peer, waits until it listens and until its session is
// up.
func (n *topology) startEntry(t *testing.T, r *harness.Rig, peer string, extra ...string) *harness.Agent {
	t.Helper()
	p := r.StartEntry(t, peer, harness.Options{Listen: entryAddr, Args: extra,
		Prefix: []string{"ip", "netns", "exec", n.entry}})
	if p.Addr != entryAddr {
		t.Fatalf("entry listens on %s, want %s", p.Addr, entryAddr)
	}
	p.WaitMessage(t, 1, 30*time.Second, "session established")
	return p
}

// startBackend starts a hash-echo backend in the db namespace.
func (n *topology) startBackend(t *testing.T) *helperProc {
	t.Helper()
	h := startHelper(t, n.db, "echo", "-listen", backendAddr)
	h.waitEvent(t, 30*time.Second, "backend listening", isEvent("listening"))
	return h
}

// bulk runs conns concurrent hash-echo exchanges of size bytes each way
// from the app namespace through the entry and returns the result.
func (n *topology) bulk(t *testing.T, conns int, size int64, timeout time.Duration) event {
	t.Helper()
	h := startHelper(t, n.app, "bulk", "-addr", entryAddr, "-conns", strconv.Itoa(conns),
		"-size", strconv.FormatInt(size, 10), "-timeout", timeout.String())
	ev := h.waitEvent(t, timeout+30*time.Second, "bulk result", isEvent("bulk"))
	if code := h.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("bulk client exited with code %d", code)
	}
	return ev
}

// mbits is a rate in Mbit/s.
func mbits(bytes int64, seconds float64) float64 {
	if seconds <= 0 {
		return 0
	}
	return float64(bytes) * 8 / seconds / 1e6
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
