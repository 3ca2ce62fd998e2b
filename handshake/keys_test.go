package handshake

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeyPEMRoundTrip(t *testing.T) {
	k, _, _ := keys()
	priv, err := MarshalPrivateKeyPEM(k)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := MarshalPublicKeyPEM(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := ParsePrivateKeyPEM(priv)
	if err != nil || !k2.Equal(k) {
		t.Fatalf("private key round trip: %v", err)
	}
	p2, err := ParsePublicKeyPEM(pub)
	if err != nil || !p2.Equal(&k.PublicKey) {
		t.Fatalf("public key round trip: %v", err)
	}
	for _, data := range [][]byte{priv, pub} {
		p, err := ParsePublicOrPrivateKey(data)
		if err != nil || Fingerprint(p) != Fingerprint(&k.PublicKey) {
			t.Fatalf("ParsePublicOrPrivateKey: %v", err)
		}
	}
	if fp := Fingerprint(&k.PublicKey); !strings.HasPrefix(fp, "SHA256:") || len(fp) != 7+43 || strings.HasSuffix(fp, "=") {
		t.Fatalf("fingerprint %q is not SHA256: + 43 unpadded base64 characters", fp)
	}
}

func TestKeyParseErrors(t *testing.T) {
	k, _, _ := keys()
	pub, _ := MarshalPublicKeyPEM(&k.PublicKey)
	priv, _ := MarshalPrivateKeyPEM(k)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallDER, _ := x509.MarshalPKCS8PrivateKey(small)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ec)
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	enc := pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1, 2, 3}})
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"public as private", pub, "this is a public key"},
		{"not PEM", []byte("hello"), "no PEM block"},
		{"encrypted", enc, "encrypted"},
		{"PKCS#1", pkcs1, "PKCS#1"},
		{"too short", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: smallDER}), "1024 bits"},
		{"not RSA", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER}), "needs RSA"},
	}
	for _, tc := range cases {
		if _, err := ParsePrivateKeyPEM(tc.data); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to say %q", tc.name, err, tc.want)
		}
	}
	if _, err := ParsePublicKeyPEM(priv); err == nil || !strings.Contains(err.Error(), "this is a private key") {
		t.Errorf("private as public: err = %v", err)
	}
	if _, err := GenerateKey(1024); err == nil {
		t.Error("GenerateKey(1024) succeeded")
	}
}

func TestLoadAuthorizedKeys(t *testing.T) {
	a, b, c := keys()
	dir := t.TempDir()
	pa, _ := MarshalPublicKeyPEM(&a.PublicKey)
	pb, _ := MarshalPublicKeyPEM(&b.PublicKey)
	pc, _ := MarshalPublicKeyPEM(&c.PublicKey)
	multi := filepath.Join(dir, "multi.pem")
	os.WriteFile(multi, append(pa, pb...), 0o644)
	set, err := LoadAuthorizedKeys(multi)
	if err != nil || set.Len() != 2 {
		t.Fatalf("file with two keys: %v, %d keys", err, set.Len())
	}
	if _, ok := set.Lookup(KeyID(&b.PublicKey)); !ok {
		t.Fatal("second key of the file not found")
	}
	sub := filepath.Join(dir, "keys")
	os.Mkdir(sub, 0o755)
	os.WriteFile(filepath.Join(sub, "a.pub"), pa, 0o644)
	os.WriteFile(filepath.Join(sub, "c.pub"), pc, 0o644)
	os.WriteFile(filepath.Join(sub, "notes.txt"), []byte("ignored"), 0o644)
	set, err = LoadAuthorizedKeys(sub)
	if err != nil || set.Len() != 2 {
		t.Fatalf("directory: %v", err)
	}
	if got := set.Fingerprints(); len(got) != 2 {
		t.Fatalf("fingerprints %v", got)
	}
	priv, _ := MarshalPrivateKeyPEM(a)
	os.WriteFile(filepath.Join(sub, "oops.pub"), priv, 0o600)
	if _, err := LoadAuthorizedKeys(sub); err == nil || !strings.Contains(err.Error(), "oops.pub") || !strings.Contains(err.Error(), "private key") {
		t.Fatalf("private key among authorized keys: err = %v", err)
	}
	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o755)
	if _, err := LoadAuthorizedKeys(empty); err == nil || !strings.Contains(err.Error(), "no public keys") {
		t.Fatalf("empty directory: err = %v", err)
	}
}

// mustKeySet is NewKeySet for keys known to be good.
func mustKeySet(tb testing.TB, keys ...*rsa.PublicKey) *KeySet {
	tb.Helper()
	s, err := NewKeySet(keys...)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// TestKeySizeEnforcedEverywhere: a key below MinKeyBits is refused by every
// constructor that takes one, not only by the PEM loaders, and Initiate sends
// nothing with it.
func TestKeySizeEnforcedEverywhere(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	good, res, _ := keys()
	wantSize := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "1024 bits") {
			t.Errorf("%s: err = %v, want it to name the 1024-bit key", what, err)
		}
	}

	_, err = NewKeySet(&good.PublicKey, &small.PublicKey)
	wantSize("NewKeySet", err)
	if _, err := NewKeySet(nil); err == nil {
		t.Error("NewKeySet(nil) succeeded")
	}

	_, err = NewResponder(Config{PrivateKey: small, Authorized: mustKeySet(t, &good.PublicKey)}, 1)
	wantSize("NewResponder with a small PrivateKey", err)

	for _, cfg := range []*Config{
		{PrivateKey: small, PeerKey: &res.PublicKey},
		{PrivateKey: good, PeerKey: &small.PublicKey},
	} {
		var conn bufConn
		_, err := Initiate(context.Background(), &conn, cfg)
		wantSize("Initiate", err)
		if conn.Len() != 0 {
			t.Errorf("Initiate wrote %d bytes with a small key", conn.Len())
		}
	}
}

// TestCheckPrivateKeyMode: a key file that group or others may read or
// write is refused, with the chmod; owner-only modes pass.
func TestCheckPrivateKeyMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.key")
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o600, 0o400, 0o700, 0o640, 0o604, 0o644, 0o660, 0o602, 0o610} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		err := CheckPrivateKeyMode(path)
		if mode&0o077 == 0 {
			if err != nil {
				t.Errorf("mode %04o: %v", mode, err)
			}
			continue
		}
		want := fmt.Sprintf("%s: mode %04o lets group or others access this private key: run chmod 600 %s", path, mode, path)
		if err == nil || err.Error() != want {
			t.Errorf("mode %04o: err = %v, want %q", mode, err, want)
		}
	}
	if err := CheckPrivateKeyMode(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("a missing file passed")
	}
}
