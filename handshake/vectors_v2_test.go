package handshake

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/mlkem"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"testing"
	"testing/cryptotest"
	"time"

	"github.com/tunnel-dev/tunnel/frame"
)

var updateV2 = flag.Bool("update-v2", false, "rewrite testdata/vectors-v2.json from the code (go test -run TestVectorV2Reproduce -update-v2)")

const vectorsV2Path = "testdata/vectors-v2.json"

// v2Vector mirrors testdata/vectors-v2.json.
type v2Vector struct {
	Description            string `json:"description"`
	Seed                   uint64 `json:"crypto_rand_seed"`
	InitiatorPrivateKeyPEM string `json:"initiator_private_key_pem"`
	InitiatorPublicKeyPEM  string `json:"initiator_public_key_pem"`
	ResponderPrivateKeyPEM string `json:"responder_private_key_pem"`
	ResponderPublicKeyPEM  string `json:"responder_public_key_pem"`
	Time                   uint64 `json:"time"`
	InitiatorRandom        string `json:"initiator_random"`
	InitiatorX25519        string `json:"initiator_x25519_private"`
	InitiatorMLKEMSeed     string `json:"initiator_mlkem768_seed"`
	Msg1                   string `json:"msg1_preface_and_hello_i"`
	SigHDigest             string `json:"sig_h_digest"`
	Msg2                   string `json:"msg2_hello_r"`
	SigRDigest             string `json:"sig_r_digest"`
	Msg3                   string `json:"msg3_key_i"`
	SigIDigest             string `json:"sig_i_digest"`
	Secret                 string `json:"secret"`
	X25519Shared           string `json:"x25519_shared"`
	MLKEMShared            string `json:"mlkem_shared"`
	TranscriptHash         string `json:"transcript_hash"`
	PRK                    string `json:"prk"`
	I2RSecret              string `json:"i2r_secret"`
	R2ISecret              string `json:"r2i_secret"`
	I2REnc                 string `json:"i2r_enc"`
	I2RMAC                 string `json:"i2r_mac"`
	R2IEnc                 string `json:"r2i_enc"`
	R2IMAC                 string `json:"r2i_mac"`
}

// makeV2Vector runs a version 2 handshake step by step in one goroutine,
// with the keys of the shared version 1 vector, fixed ephemeral values of
// the initiator, and crypto/rand seeded for everything else (the
// responder's shares and random, the RSA-PSS salts, the OAEP seed, the
// secret), so that every byte is reproducible.
func makeV2Vector(t *testing.T) *v2Vector {
	t.Helper()
	v1 := loadHandshakeVector(t)
	v := &v2Vector{
		Description: "One complete version 2 handshake (PROTOCOL-v2.md): the keys of the shared version 1 vector, " +
			"the initiator's ephemeral values and time as given, everything else drawn from Go's crypto/rand seeded " +
			"with crypto_rand_seed (testing/cryptotest.SetGlobalRandom), so that this implementation reproduces it byte for byte. " +
			"Another implementation cannot reproduce the randomized parts (RSA-PSS, RSA-OAEP, the responder's shares) but must " +
			"accept msg1 at a responder whose clock reads time, msg2 and msg3, and derive exactly these keys. Digests are the " +
			"SHA-256 values each signature's message ends with (context || 0x00 || digest).",
		Seed:                   2,
		InitiatorPrivateKeyPEM: v1.InitiatorPrivateKeyPEM,
		InitiatorPublicKeyPEM:  v1.InitiatorPublicKeyPEM,
		ResponderPrivateKeyPEM: v1.ResponderPrivateKeyPEM,
		ResponderPublicKeyPEM:  v1.ResponderPublicKeyPEM,
		Time:                   1_767_225_600, // 2026-01-01T00:00:00Z
		InitiatorRandom:        hex.EncodeToString(bytes.Repeat([]byte{0x44}, randomLen)),
		InitiatorX25519:        hex.EncodeToString(bytes.Repeat([]byte{0x55}, 32)),
		InitiatorMLKEMSeed:     hex.EncodeToString(bytes.Repeat([]byte{0x66}, 64)),
	}
	cryptotest.SetGlobalRandom(t, v.Seed)
	ini, res := v2Sides(t, v)
	m1, err := ini.hello()
	if err != nil {
		t.Fatal(err)
	}
	res.m1 = m1
	hi, err := res.checkHelloI2(m1[prefaceLen:])
	if err != nil {
		t.Fatalf("HELLO_I rejected: %v", err)
	}
	m2, err := res.helloR(context.Background(), &hi.helloI)
	if err != nil {
		t.Fatal(err)
	}
	if err := ini.handleHelloR(m2); err != nil {
		t.Fatalf("HELLO_R rejected: %v", err)
	}
	m3, secret, err := ini.keyI()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := res.handleKeyI(context.Background(), m3); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("KEY_I: %v", err)
	}
	h2, _ := parseHelloR2(m2[msgHeaderLen:])
	k3, _ := parseKeyI(m3[msgHeaderLen:])
	v.Msg1, v.Msg2, v.Msg3 = hex.EncodeToString(m1), hex.EncodeToString(m2), hex.EncodeToString(m3)
	v.SigHDigest = hex.EncodeToString(digest(m1[:len(m1)-2-len(hi.sig)]))
	v.SigRDigest = hex.EncodeToString(digest(m1, h2.signedBody()))
	v.SigIDigest = hex.EncodeToString(digest(m1, m2, k3.signedBody()))
	v.Secret = hex.EncodeToString(secret)
	v.X25519Shared, v.MLKEMShared = hex.EncodeToString(ini.x25519Shared), hex.EncodeToString(ini.mlkemShared)
	fillSchedule(t, v, m1, m2, m3, secret, ini.x25519Shared, ini.mlkemShared)
	return v
}

// v2Sides returns the initiator of v with its fixed ephemeral values, and
// its responder, both at v.Time.
func v2Sides(t *testing.T, v *v2Vector) (*initiator, *responder) {
	t.Helper()
	iPriv, err := ParsePrivateKeyPEM([]byte(v.InitiatorPrivateKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	rPriv, err := ParsePrivateKeyPEM([]byte(v.ResponderPrivateKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	x, err := ecdh.X25519().NewPrivateKey(unhex(t, v.InitiatorX25519))
	if err != nil {
		t.Fatal(err)
	}
	dk, err := mlkem.NewDecapsulationKey768(unhex(t, v.InitiatorMLKEMSeed))
	if err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return time.Unix(int64(v.Time), 0) }
	ini := &initiator{
		cfg:     &Config{PrivateKey: iPriv, PeerKey: &rPriv.PublicKey, Version: Version2, Now: now},
		version: Version2,
		random:  unhex(t, v.InitiatorRandom),
		x25519:  x,
		mlkem:   dk,
	}
	res := &responder{cfg: &Config{PrivateKey: rPriv, Authorized: mustKeySet(t, &iPriv.PublicKey), Now: now}, version: Version2}
	return ini, res
}

func fillSchedule(t *testing.T, v *v2Vector, m1, m2, m3, secret, xs, ms []byte) {
	t.Helper()
	s, err := deriveSchedule(m1, m2, m3, secret, xs, ms)
	if err != nil {
		t.Fatal(err)
	}
	v.TranscriptHash, v.PRK = hex.EncodeToString(s.th[:]), hex.EncodeToString(s.prk)
	v.I2RSecret, v.R2ISecret = hex.EncodeToString(s.i2r[:]), hex.EncodeToString(s.r2i[:])
	enc, mac := frame.DeriveRecordKeys(s.i2r)
	v.I2REnc, v.I2RMAC = hex.EncodeToString(enc[:]), hex.EncodeToString(mac[:])
	enc, mac = frame.DeriveRecordKeys(s.r2i)
	v.R2IEnc, v.R2IMAC = hex.EncodeToString(enc[:]), hex.EncodeToString(mac[:])
}

func loadV2Vector(t testing.TB) *v2Vector {
	t.Helper()
	raw, err := os.ReadFile(vectorsV2Path)
	if err != nil {
		t.Fatal(err)
	}
	v := &v2Vector{}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatal(err)
	}
	if v.Msg1 == "" || v.Msg3 == "" || v.R2IMAC == "" {
		t.Fatal("version 2 vector is missing fields")
	}
	return v
}

// TestVectorV2Reproduce: the code makes the vector byte for byte. With
// -update-v2 it rewrites it instead (after a deliberate change of the wire
// format, or if Go changes how it draws from crypto/rand).
func TestVectorV2Reproduce(t *testing.T) {
	got := makeV2Vector(t)
	if *updateV2 {
		b, err := json.MarshalIndent(got, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vectorsV2Path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want := loadV2Vector(t)
	gj, _ := json.MarshalIndent(got, "", "  ")
	wj, _ := json.MarshalIndent(want, "", "  ")
	if !bytes.Equal(gj, wj) {
		t.Fatalf("the code no longer makes %s:\n got %s\nwant %s", vectorsV2Path, gj, wj)
	}
}

// TestVectorV2Verify checks the vector as another implementation would,
// without reproducing the random parts: each side accepts the other's
// messages and both derive the vector's keys.
func TestVectorV2Verify(t *testing.T) {
	v := loadV2Vector(t)
	ini, res := v2Sides(t, v)
	m1, m2, m3 := unhex(t, v.Msg1), unhex(t, v.Msg2), unhex(t, v.Msg3)
	if !bytes.Equal(m1[:prefaceLen], prefaceV2[:]) {
		t.Fatalf("preface %x", m1[:prefaceLen])
	}
	res.m1 = m1
	hi, err := res.checkHelloI2(m1[prefaceLen:])
	if err != nil {
		t.Fatalf("HELLO_I rejected: %v", err)
	}
	checkHex(t, "sig_h digest", digest(m1[:len(m1)-2-len(hi.sig)]), v.SigHDigest)
	ini.m1 = m1
	if err := ini.handleHelloR(m2); err != nil {
		t.Fatalf("HELLO_R rejected: %v", err)
	}
	checkHex(t, "x25519 shared", ini.x25519Shared, v.X25519Shared)
	checkHex(t, "ML-KEM shared", ini.mlkemShared, v.MLKEMShared)
	res.m2 = m2
	res.peerKey = ini.cfg.PrivateKey.Public().(*rsa.PublicKey)
	secret, err := res.handleKeyI(context.Background(), m3)
	if err != nil {
		t.Fatalf("KEY_I rejected: %v", err)
	}
	got := &v2Vector{}
	fillSchedule(t, got, m1, m2, m3, secret, ini.x25519Shared, ini.mlkemShared)
	checkHex(t, "secret", secret, v.Secret)
	for _, c := range [][3]string{
		{"transcript hash", got.TranscriptHash, v.TranscriptHash}, {"prk", got.PRK, v.PRK},
		{"i2r secret", got.I2RSecret, v.I2RSecret}, {"r2i secret", got.R2ISecret, v.R2ISecret},
		{"i2r enc", got.I2REnc, v.I2REnc}, {"i2r mac", got.I2RMAC, v.I2RMAC},
		{"r2i enc", got.R2IEnc, v.R2IEnc}, {"r2i mac", got.R2IMAC, v.R2IMAC},
	} {
		if c[1] != c[2] {
			t.Errorf("%s: got %s, want %s", c[0], c[1], c[2])
		}
	}

	// Not a version 1 transcript: the version 1 sides refuse it.
	ini.version = Version1
	if err := ini.handleHelloR(m2); err == nil {
		t.Error("a version 1 initiator accepted the version 2 HELLO_R")
	}
	res.version = Version1
	if _, err := res.handleKeyI(context.Background(), m3); err == nil {
		t.Error("KEY_I of version 2 verified under the version 1 context")
	}
}

// TestVectorV2Tampered: a flipped bit anywhere in HELLO_I (preface and
// header included: sig_h covers them), or in the bodies of HELLO_R and
// KEY_I, is refused by the side that checks it.
func TestVectorV2Tampered(t *testing.T) {
	v := loadV2Vector(t)
	m1, m2, m3 := unhex(t, v.Msg1), unhex(t, v.Msg2), unhex(t, v.Msg3)
	for i := range m1 {
		mod := bytes.Clone(m1)
		mod[i] ^= 0x10
		_, res := v2Sides(t, v)
		res.m1 = mod
		if _, err := res.checkHelloI2(mod[prefaceLen:]); err == nil {
			t.Fatalf("HELLO_I with byte %d flipped was accepted", i)
		}
	}
	for i := msgHeaderLen; i < len(m2); i++ {
		mod := bytes.Clone(m2)
		mod[i] ^= 0x10
		ini, _ := v2Sides(t, v)
		ini.m1 = m1
		if err := ini.handleHelloR(mod); err == nil {
			t.Fatalf("HELLO_R with byte %d flipped was accepted", i)
		}
	}
	for i := msgHeaderLen; i < len(m3); i++ {
		mod := bytes.Clone(m3)
		mod[i] ^= 0x10
		ini, res := v2Sides(t, v)
		res.m1, res.m2, res.peerKey = m1, m2, &ini.cfg.PrivateKey.PublicKey
		if _, err := res.handleKeyI(context.Background(), mod); err == nil {
			t.Fatalf("KEY_I with byte %d flipped was accepted", i)
		}
	}
}
