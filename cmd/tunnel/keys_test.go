package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/handshake"
)

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestKeygen(t *testing.T) {
	out := filepath.Join(t.TempDir(), "exit")
	code, stdout, errs := runCmd(t, "keygen", "--out", out, "--bits", "2048")
	if code != 0 {
		t.Fatalf("keygen: code %d, stderr %q", code, errs)
	}
	if m := mode(t, out+".key"); m != 0o600 {
		t.Errorf(".key mode %v, want 0600", m)
	}
	if m := mode(t, out+".pub"); m != 0o644 {
		t.Errorf(".pub mode %v, want 0644", m)
	}
	k, err := handshake.LoadPrivateKey(out + ".key")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := handshake.LoadPublicKey(out + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if !k.PublicKey.Equal(pub) {
		t.Error(".pub is not the public half of .key")
	}
	if k.N.BitLen() != 2048 {
		t.Errorf("key has %d bits, want 2048", k.N.BitLen())
	}
	fp := handshake.Fingerprint(pub)
	if stdout != fp+"\n" {
		t.Errorf("stdout %q, want the fingerprint %q alone", stdout, fp)
	}

	// fingerprint agrees, from either file.
	for _, f := range []string{out + ".key", out + ".pub"} {
		code, got, errs := runCmd(t, "fingerprint", f)
		if code != 0 || got != fp+"\n" {
			t.Errorf("fingerprint %s: code %d, %q (stderr %q), want %q", f, code, got, errs, fp)
		}
	}
}

func TestKeygenDefaultBits(t *testing.T) {
	if testing.Short() {
		t.Skip("3072-bit key generation is slow")
	}
	out := filepath.Join(t.TempDir(), "k")
	if code, _, errs := runCmd(t, "keygen", "--out", out); code != 0 {
		t.Fatalf("keygen: %d %s", code, errs)
	}
	k, err := handshake.LoadPrivateKey(out + ".key")
	if err != nil {
		t.Fatal(err)
	}
	if k.N.BitLen() != handshake.DefaultKeyBits {
		t.Errorf("default key has %d bits, want %d", k.N.BitLen(), handshake.DefaultKeyBits)
	}
}

// TestKeygenOverwrite checks that keygen leaves an existing .key or .pub alone without --force
// and replaces both, with the right modes, with it.
func TestKeygenOverwrite(t *testing.T) {
	for _, existing := range []string{".key", ".pub"} {
		dir := t.TempDir()
		out := filepath.Join(dir, "k")
		old := writeFile(t, out+existing, "precious\n")
		code, stdout, errs := runCmd(t, "keygen", "--out", out, "--bits", "2048")
		if code != exitUsage || stdout != "" {
			t.Errorf("%s exists: code %d stdout %q, want %d and nothing", existing, code, stdout, exitUsage)
		}
		if !strings.Contains(errs, old+" exists") || !strings.Contains(errs, "--force") {
			t.Errorf("%s exists: stderr %q", existing, errs)
		}
		if b, _ := os.ReadFile(old); string(b) != "precious\n" {
			t.Errorf("%s was changed without --force", old)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Errorf("%s exists: keygen left %d files, want only the old one", existing, len(entries))
		}
	}

	out := filepath.Join(t.TempDir(), "k")
	writeFile(t, out+".key", "old\n") // mode 0644: --force must tighten it
	writeFile(t, out+".pub", "old\n")
	code, stdout, errs := runCmd(t, "keygen", "--out", out, "--bits", "2048", "--force")
	if code != 0 {
		t.Fatalf("--force: code %d %q", code, errs)
	}
	if m := mode(t, out+".key"); m != 0o600 {
		t.Errorf("--force: .key mode %v, want 0600", m)
	}
	pub, err := handshake.LoadPublicKey(out + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if k, err := handshake.LoadPrivateKey(out + ".key"); err != nil || !k.PublicKey.Equal(pub) {
		t.Errorf("--force: files are not a fresh pair: %v", err)
	}
	if stdout != handshake.Fingerprint(pub)+"\n" {
		t.Errorf("--force: stdout %q", stdout)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCmd(t, "version")
	if code != 0 || !strings.HasPrefix(out, "tunnel ") || !strings.Contains(out, runtime.Version()) ||
		strings.Count(out, "\n") != 1 {
		t.Errorf("version: code %d, %q", code, out)
	}
}

func TestKeygenIfMissing(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "exit")
	code, first, errs := runCmd(t, "keygen", "--out", out, "--bits", "2048", "--if-missing")
	if code != 0 || !strings.HasPrefix(first, "SHA256:") {
		t.Fatalf("first run: code %d stdout %q stderr %q", code, first, errs)
	}
	key, _ := os.ReadFile(out + ".key")
	code, again, errs := runCmd(t, "keygen", "--out", out, "--bits", "2048", "--if-missing")
	if code != 0 || again != first {
		t.Fatalf("second run: code %d stdout %q (first %q) stderr %q", code, again, first, errs)
	}
	if now, _ := os.ReadFile(out + ".key"); string(now) != string(key) {
		t.Fatal("--if-missing replaced an existing key")
	}

	// A pair that does not belong together, or half a pair, is an error.
	other := filepath.Join(dir, "other")
	if code, _, errs := runCmd(t, "keygen", "--out", other, "--bits", "2048"); code != 0 {
		t.Fatal(errs)
	}
	os.Rename(other+".pub", out+".pub")
	code, _, errs = runCmd(t, "keygen", "--out", out, "--if-missing")
	if code != exitUsage || !strings.Contains(errs, "mixed up") {
		t.Fatalf("mismatched pair: code %d stderr %q", code, errs)
	}
	os.Remove(out + ".pub")
	code, _, errs = runCmd(t, "keygen", "--out", out, "--if-missing")
	if code != exitUsage || !strings.Contains(errs, "only one of") {
		t.Fatalf("half a pair: code %d stderr %q", code, errs)
	}
	if code, _, errs := runCmd(t, "keygen", "--out", out, "--if-missing", "--force"); code != exitUsage || !strings.Contains(errs, "contradict") {
		t.Fatalf("--force with --if-missing: code %d stderr %q", code, errs)
	}
}
