package perf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// stunnelPair is a stunnel client (where applications connect) and a
// stunnel server in front of a backend, the TLS counterpart of an entry and
// an exit.
type stunnelPair struct {
	addr string
	pids []int
}

// startStunnel starts a stunnel pair in front of backend, pinned to CPU 0
// when pin is set. It returns nil, silently, when stunnel is not installed
// or the settings leave it out: it is a reference, not part of the tunnel's
// figures.
func (r *rig) startStunnel(b *testing.B, backend string, pin bool) *stunnelPair {
	b.Helper()
	if !r.set.stunnel {
		return nil
	}
	bin, err := exec.LookPath("stunnel4")
	if err != nil {
		if bin, err = exec.LookPath("stunnel"); err != nil {
			return nil
		}
	}
	cert, key := writeStunnelCert(b)
	server := net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(b)))
	client := net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(b)))
	s := &stunnelPair{addr: client}
	// Both processes write their messages to one file, for a failure
	// message.
	logPath := filepath.Join(b.TempDir(), "stunnel.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close() // the processes hold their own descriptors
	for _, conf := range []string{
		fmt.Sprintf("[perf]\naccept = %s\nconnect = %s\ncert = %s\nkey = %s\n", server, backend, cert, key),
		fmt.Sprintf("[perf]\nclient = yes\naccept = %s\nconnect = %s\n", client, server),
	} {
		path := filepath.Join(b.TempDir(), "stunnel.conf")
		conf = "foreground = yes\npid =\ndebug = 4\n" + conf
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(bin, path)
		if pin {
			cmd = exec.Command(tasksetPath(b), "-c", "0", bin, path)
		}
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			b.Fatalf("starting stunnel: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		b.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
		})
		s.pids = append(s.pids, cmd.Process.Pid)
	}
	// Wait until both listen.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c1, err1 := net.Dial("tcp", server)
		c2, err2 := net.Dial("tcp", client)
		for _, c := range []net.Conn{c1, c2} {
			if c != nil {
				c.Close()
			}
		}
		if err1 == nil && err2 == nil {
			return s
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logPath)
			b.Fatalf("stunnel did not listen on %s and %s within 30 s; its output:\n%s", server, client, out)
		}
	}
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
