package handshake

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Sizes of the long-term RSA keys (PROTOCOL.md section 1).
const (
	MinKeyBits     = 2048
	MaxKeyBits     = 8192
	DefaultKeyBits = 3072
)

// KeyIDLen is the size of a key id, SHA-256 of the PKIX DER of a public key.
const KeyIDLen = 32

// KeyID returns SHA-256 of the PKIX DER encoding of pub.
func KeyID(pub *rsa.PublicKey) [KeyIDLen]byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic("handshake: marshal RSA public key: " + err.Error())
	}
	return sha256.Sum256(der)
}

// Fingerprint is the form people see: "SHA256:" and the unpadded standard
// base64 of the key id, as OpenSSH prints it.
func Fingerprint(pub *rsa.PublicKey) string { return FingerprintID(KeyID(pub)) }

// FingerprintID formats a key id as a fingerprint.
func FingerprintID(id [KeyIDLen]byte) string {
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(id[:])
}

// GenerateKey makes an RSA key of bits bits, within [MinKeyBits, MaxKeyBits].
func GenerateKey(bits int) (*rsa.PrivateKey, error) {
	if bits < MinKeyBits || bits > MaxKeyBits {
		return nil, fmt.Errorf("handshake: RSA key size %d bits is outside %d..%d", bits, MinKeyBits, MaxKeyBits)
	}
	return rsa.GenerateKey(rand.Reader, bits)
}

// MarshalPrivateKeyPEM encodes k as PKCS#8 PEM ("PRIVATE KEY").
func MarshalPrivateKeyPEM(k *rsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPublicKeyPEM encodes pub as PKIX PEM ("PUBLIC KEY").
func MarshalPublicKeyPEM(pub *rsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// checkKey rejects a missing key, and one of a size the protocol does not
// allow.
func checkKey(pub *rsa.PublicKey) error {
	if pub == nil || pub.N == nil {
		return errors.New("no key")
	}
	return checkSize(pub)
}

// checkSize rejects keys the protocol does not allow.
func checkSize(pub *rsa.PublicKey) error {
	if bits := pub.N.BitLen(); bits < MinKeyBits || bits > MaxKeyBits {
		return fmt.Errorf("RSA key of %d bits: the protocol needs %d to %d bits; make a new one with `tunnel keygen`", bits, MinKeyBits, MaxKeyBits)
	}
	return nil
}

// firstBlock decodes the first PEM block of data.
func firstBlock(data []byte) (*pem.Block, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM block found; expected a key file written by `tunnel keygen`")
	}
	return b, nil
}

// ParsePrivateKeyPEM parses a PKCS#8 RSA private key.
func ParsePrivateKeyPEM(data []byte) (*rsa.PrivateKey, error) {
	b, err := firstBlock(data)
	if err != nil {
		return nil, err
	}
	switch {
	case b.Type == "PUBLIC KEY":
		return nil, errors.New("this is a public key; give the private key (.key) made by `tunnel keygen`")
	case b.Type == "ENCRYPTED PRIVATE KEY" || b.Headers["Proc-Type"] != "":
		return nil, errors.New("the private key is encrypted; tunnel needs an unencrypted PKCS#8 key (`openssl pkcs8 -topk8 -nocrypt`), protected by file permissions")
	case b.Type == "RSA PRIVATE KEY":
		return nil, errors.New("this is a PKCS#1 key; convert it with `openssl pkcs8 -topk8 -nocrypt` or make one with `tunnel keygen`")
	case b.Type != "PRIVATE KEY":
		return nil, fmt.Errorf("PEM block is %q; expected \"PRIVATE KEY\"", b.Type)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("bad PKCS#8 private key: %w", err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("the private key is %T; tunnel needs RSA", k)
	}
	if err := checkSize(&rk.PublicKey); err != nil {
		return nil, err
	}
	return rk, nil
}

// parsePublicBlock parses one PKIX "PUBLIC KEY" block.
func parsePublicBlock(b *pem.Block) (*rsa.PublicKey, error) {
	switch b.Type {
	case "PUBLIC KEY":
	case "PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY":
		return nil, errors.New("this is a private key; give the public key (.pub) and keep the private key on its own host")
	default:
		return nil, fmt.Errorf("PEM block is %q; expected \"PUBLIC KEY\"", b.Type)
	}
	k, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("bad PKIX public key: %w", err)
	}
	rk, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("the public key is %T; tunnel needs RSA", k)
	}
	if err := checkSize(rk); err != nil {
		return nil, err
	}
	return rk, nil
}

// ParsePublicKeyPEM parses a PKIX RSA public key.
func ParsePublicKeyPEM(data []byte) (*rsa.PublicKey, error) {
	b, err := firstBlock(data)
	if err != nil {
		return nil, err
	}
	return parsePublicBlock(b)
}

// ParsePublicOrPrivateKey returns the public key of a public or private
// key file, for showing fingerprints.
func ParsePublicOrPrivateKey(data []byte) (*rsa.PublicKey, error) {
	b, err := firstBlock(data)
	if err != nil {
		return nil, err
	}
	if b.Type == "PUBLIC KEY" {
		return parsePublicBlock(b)
	}
	k, err := ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, err
	}
	return &k.PublicKey, nil
}

// LoadPrivateKey reads and parses a private key file.
func LoadPrivateKey(path string) (*rsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// CheckPrivateKeyMode refuses a private key file that group or others may
// read or write, as OpenSSH does: the key is the agent's identity. The error
// gives the chmod that fixes it.
func CheckPrivateKeyMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s: mode %04o lets group or others access this private key: run chmod 600 %s", path, perm, path)
	}
	return nil
}

// LoadPublicKey reads and parses a public key file.
func LoadPublicKey(path string) (*rsa.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := ParsePublicKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// KeySet is a set of public keys indexed by key id: the initiators a
// responder accepts. It is read-only once built and safe for concurrent use.
type KeySet struct {
	keys map[[KeyIDLen]byte]*rsa.PublicKey
	// byName: the ids of the keys each file held, by the file's name
	// without .pub or .pem (LoadAuthorizedKeys only).
	byName map[string][][KeyIDLen]byte
}

// NewKeySet returns a set holding keys. A nil key, or one of a size the
// protocol does not allow, is an error.
func NewKeySet(keys ...*rsa.PublicKey) (*KeySet, error) {
	s := &KeySet{keys: make(map[[KeyIDLen]byte]*rsa.PublicKey, len(keys))}
	for i, k := range keys {
		if err := checkKey(k); err != nil {
			return nil, fmt.Errorf("handshake: key set: key %d: %w", i+1, err)
		}
		s.keys[KeyID(k)] = k
	}
	return s, nil
}

// Lookup returns the key with the given id.
func (s *KeySet) Lookup(id [KeyIDLen]byte) (*rsa.PublicKey, bool) {
	k, ok := s.keys[id]
	return k, ok
}

// Len is the number of keys in the set.
func (s *KeySet) Len() int { return len(s.keys) }

// Named returns the fingerprints of the keys that LoadAuthorizedKeys read
// from the file called name with .pub or .pem after it ("app1" for
// app1.pub), or none.
func (s *KeySet) Named(name string) []string {
	var out []string
	for _, id := range s.byName[name] {
		out = append(out, FingerprintID(id))
	}
	return out
}

// Fingerprints lists the fingerprints of the set, sorted.
func (s *KeySet) Fingerprints() []string {
	out := make([]string, 0, len(s.keys))
	for id := range s.keys {
		out = append(out, FingerprintID(id))
	}
	sort.Strings(out)
	return out
}

// LoadAuthorizedKeys reads a file of one or more PUBLIC KEY PEM blocks, or a
// directory whose *.pub and *.pem files each hold such blocks. Any block
// that is not a valid RSA public key is an error naming its file; an empty
// result is an error too.
func LoadAuthorizedKeys(path string) (*KeySet, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	files := []string{path}
	if fi.IsDir() {
		files = nil
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			name := e.Name()
			if !e.IsDir() && (strings.HasSuffix(name, ".pub") || strings.HasSuffix(name, ".pem")) {
				files = append(files, filepath.Join(path, name))
			}
		}
	}
	set := &KeySet{keys: map[[KeyIDLen]byte]*rsa.PublicKey{}, byName: map[string][][KeyIDLen]byte{}}
	for _, f := range files {
		name := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(f), ".pub"), ".pem")
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		n := 0
		for {
			var b *pem.Block
			b, data = pem.Decode(data)
			if b == nil {
				break
			}
			k, err := parsePublicBlock(b)
			if err != nil {
				return nil, fmt.Errorf("%s: key %d: %w", f, n+1, err)
			}
			set.keys[KeyID(k)] = k
			set.byName[name] = append(set.byName[name], KeyID(k))
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("%s: no PUBLIC KEY block; expected public keys (.pub) made by `tunnel keygen`", f)
		}
	}
	if set.Len() == 0 {
		return nil, fmt.Errorf("%s: no public keys (*.pub or *.pem) in this directory", path)
	}
	return set, nil
}
