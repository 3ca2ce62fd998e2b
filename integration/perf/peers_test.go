package perf

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// The peers are the other encrypting tunnels an operator compares tunnel
// with, each measured in the same run as a reference: a client-side process
// where applications connect and a server-side process in front of the
// backend. A peer whose programs are not installed is left out silently:
// it is a reference, not part of the tunnel's figures.
var peers = []struct {
	col   column
	start func(r *rig, b *testing.B, backend string, place placement) (route, bool)
}{
	{stunnel, (*rig).startStunnel},
	{spiped, (*rig).startSpiped},
	{sshL, (*rig).startSSH},
}

// peerRoutes starts every peer the settings include in front of backend,
// placed as place says, and returns their routes.
func (r *rig) peerRoutes(b *testing.B, backend string, place placement) []route {
	b.Helper()
	var routes []route
	for _, p := range peers {
		if !r.set.peers[p.col] {
			continue
		}
		if rt, ok := p.start(r, b, backend, place); ok {
			routes = append(routes, rt)
		}
	}
	return routes
}

// parsePeers reads TUNNEL_PERF_PEERS: a comma-separated list of peer names,
// "none", or empty for every peer.
func parsePeers(b *testing.B, v string) map[column]bool {
	b.Helper()
	set := make(map[column]bool)
	if v == "none" {
		return set
	}
	for _, p := range peers {
		set[p.col] = v == ""
	}
	if v == "" {
		return set
	}
	for _, name := range strings.Split(v, ",") {
		found := false
		for _, p := range peers {
			if p.col.String() == strings.TrimSpace(name) {
				set[p.col], found = true, true
			}
		}
		if !found {
			b.Fatalf("TUNNEL_PERF_PEERS=%q: %q is not a peer; want a comma-separated list of stunnel, spiped and ssh, or none", v, name)
		}
	}
	return set
}

// spawn starts a peer's process after prefix (a taskset command line, or
// nothing), with its output going to log, and stops it at cleanup. It
// returns the process id.
func spawn(b *testing.B, prefix []string, log io.Writer, name string, args ...string) int {
	b.Helper()
	argv := append(append(prefix[:len(prefix):len(prefix)], name), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		b.Fatalf("starting %s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	return cmd.Process.Pid
}

// peerLog returns a file in a fresh temporary directory for a peer's
// processes to write their messages to, for a failure message.
func peerLog(b *testing.B, name string) (*os.File, string) {
	b.Helper()
	path := filepath.Join(b.TempDir(), name+".log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f, path
}

// waitListening waits until every address accepts a connection.
func waitListening(b *testing.B, what, logPath string, addrs ...string) {
	b.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		up := 0
		for _, a := range addrs {
			if c, err := net.Dial("tcp", a); err == nil {
				c.Close()
				up++
			}
		}
		if up == len(addrs) {
			return
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logPath)
			b.Fatalf("%s did not listen on %s within 30 s; its output:\n%s", what, strings.Join(addrs, " and "), out)
		}
	}
}

// loopbackAddr returns 127.0.0.1 with a free port.
func loopbackAddr(b *testing.B) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(b)))
}

// startStunnel starts a stunnel client and server (TLS 1.3, ECDSA P-256)
// in front of backend, the TLS counterpart of an entry and an exit. They
// log warnings only: at its default level stunnel logs every connection,
// which costs more than the connection itself.
func (r *rig) startStunnel(b *testing.B, backend string, place placement) (route, bool) {
	b.Helper()
	bin, err := exec.LookPath("stunnel4")
	if err != nil {
		if bin, err = exec.LookPath("stunnel"); err != nil {
			return route{}, false
		}
	}
	cert, key := writeStunnelCert(b)
	server, client := loopbackAddr(b), loopbackAddr(b)
	log, logPath := peerLog(b, "stunnel")
	rt := route{col: stunnel, addr: client}
	for i, conf := range []string{
		fmt.Sprintf("[perf]\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\n", server, backend, cert, key),
		fmt.Sprintf("[perf]\nclient = yes\naccept = %s\nconnect = %s\n", client, server),
	} {
		path := filepath.Join(b.TempDir(), "stunnel.conf")
		conf = "foreground = yes\npid =\ndebug = 4\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n" + conf
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			b.Fatal(err)
		}
		rt.pids = append(rt.pids, spawn(b, place.prefix(b, i == 0), log, bin, path))
	}
	waitListening(b, "stunnel", logPath, server, client)
	return rt, true
}

// writeStunnelCert writes a self-signed ECDSA P-256 certificate and its key
// for the stunnel server, and returns their paths.
func writeStunnelCert(b *testing.B) (cert, key string) {
	b.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "perf"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"perf"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		b.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		b.Fatal(err)
	}
	return cert, key
}

// startSpiped starts a spiped encrypting and decrypting pair in front of
// backend, sharing a random 32-byte key. spiped runs a handshake for every
// connection.
func (r *rig) startSpiped(b *testing.B, backend string, place placement) (route, bool) {
	b.Helper()
	bin, err := exec.LookPath("spiped")
	if err != nil {
		return route{}, false
	}
	dir := b.TempDir()
	keyPath := filepath.Join(dir, "key")
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(keyPath, key, 0o600); err != nil {
		b.Fatal(err)
	}
	server, client := loopbackAddr(b), loopbackAddr(b)
	log, logPath := peerLog(b, "spiped")
	rt := route{col: spiped, addr: client}
	bracket := func(a string) string { // spiped's form of an address: [host]:port
		host, port, _ := net.SplitHostPort(a)
		return "[" + host + "]:" + port
	}
	for i, args := range [][]string{
		{"-d", "-s", bracket(server), "-t", bracket(backend)},
		{"-e", "-s", bracket(client), "-t", bracket(server)},
	} {
		// -F: stay in the foreground (and write no pid file); -n 0: no cap
		// on connections.
		args = append(args, "-F", "-n", "0", "-k", keyPath)
		rt.pids = append(rt.pids, spawn(b, place.prefix(b, i == 0), log, bin, args...))
	}
	waitListening(b, "spiped", logPath, server, client)
	return rt, true
}

// startSSH starts an OpenSSH server on loopback and an ssh client that
// forwards a local port to backend through it (ssh -L), with the
// aes256-gcm@openssh.com cipher. sshd needs root for its privilege
// separation; without root, or without OpenSSH, it is left out. Its route
// counts the client and every sshd process of the session.
func (r *rig) startSSH(b *testing.B, backend string, place placement) (route, bool) {
	b.Helper()
	sshd, err1 := exec.LookPath("sshd")
	if err1 != nil {
		sshd, err1 = exec.LookPath("/usr/sbin/sshd")
	}
	ssh, err2 := exec.LookPath("ssh")
	keygen, err3 := exec.LookPath("ssh-keygen")
	if err1 != nil || err2 != nil || err3 != nil || os.Geteuid() != 0 {
		return route{}, false
	}
	// sshd refuses to start without its privilege separation directory,
	// which Debian's package makes at boot.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		b.Fatalf("making sshd's privilege separation directory: %v", err)
	}
	dir := b.TempDir()
	for _, k := range []string{"host", "user"} {
		if out, err := exec.Command(keygen, "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			b.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	server, client := loopbackAddr(b), loopbackAddr(b)
	conf := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(conf, []byte(strings.Join([]string{
		"ListenAddress " + server,
		"HostKey " + filepath.Join(dir, "host"),
		"AuthorizedKeysFile " + filepath.Join(dir, "user.pub"),
		"PermitRootLogin prohibit-password",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"StrictModes no",
		"PidFile none",
		"Ciphers aes256-gcm@openssh.com",
		"Compression no",
		"LogLevel ERROR",
		"",
	}, "\n")), 0o600); err != nil {
		b.Fatal(err)
	}
	log, logPath := peerLog(b, "ssh")
	// sshd is not probed with a connection: its child for the probe could
	// still be exiting when the session's processes are listed. The client
	// retries instead, once a second.
	listener := spawn(b, place.prefix(b, true), log, sshd, "-D", "-e", "-f", conf)
	host, port, _ := net.SplitHostPort(server)
	lhost, lport, _ := net.SplitHostPort(client)
	bhost, bport, _ := net.SplitHostPort(backend)
	clientPid := spawn(b, place.prefix(b, false), log, ssh, "-F", "/dev/null", "-N", "-T",
		"-o", "BatchMode=yes", "-o", "ConnectionAttempts=30", "-o", "ExitOnForwardFailure=yes", "-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes",
		"-o", "Compression=no", "-c", "aes256-gcm@openssh.com", "-i", filepath.Join(dir, "user"),
		"-p", port, "-L", net.JoinHostPort(lhost, lport)+":"+bhost+":"+bport, "root@"+host)
	waitListening(b, "ssh -L", logPath, client)
	// sshd's child for the time before authentication may still be exiting:
	// list the session's processes until two listings agree.
	session := descendants(listener)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		again := descendants(listener)
		if slices.Equal(again, session) {
			break
		}
		session = again
	}
	return route{col: sshL, addr: client, pids: append([]int{clientPid}, session...)}, true
}

// descendants returns the process ids of pid and every live process below
// it, leaving out processes that have exited.
func descendants(pid int) []int {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	// The state follows the command name, which is in parentheses.
	if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) == 0 || f[0] == "Z" {
		return nil
	}
	pids := []int{pid}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		kids, _ := os.ReadFile(t)
		for _, k := range strings.Fields(string(kids)) {
			if n, err := strconv.Atoi(k); err == nil {
				pids = append(pids, descendants(n)...)
			}
		}
	}
	return pids
}
