package handshake

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/mlkem"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"

	"github.com/tunnel-dev/tunnel/frame"
)

// handshakeVector mirrors testdata/handshake.json, copied from shared/vectors.
type handshakeVector struct {
	InitiatorPrivateKeyPEM string `json:"initiator_private_key_pem"`
	InitiatorPublicKeyPEM  string `json:"initiator_public_key_pem"`
	ResponderPrivateKeyPEM string `json:"responder_private_key_pem"`
	ResponderPublicKeyPEM  string `json:"responder_public_key_pem"`
	InitiatorKeyID         string `json:"initiator_key_id"`
	ResponderKeyID         string `json:"responder_key_id"`
	InitiatorRandom        string `json:"initiator_random"`
	InitiatorX25519        string `json:"initiator_x25519_private"`
	InitiatorMLKEMSeed     string `json:"initiator_mlkem768_seed"`
	ResponderX25519        string `json:"responder_x25519_private"`
	Secret                 string `json:"secret"`
	X25519Shared           string `json:"x25519_shared"`
	MLKEMShared            string `json:"mlkem_shared"`
	Msg1                   string `json:"msg1_preface_and_hello_i"`
	Msg2                   string `json:"msg2_hello_r"`
	Msg3                   string `json:"msg3_key_i"`
	TranscriptHash         string `json:"transcript_hash"`
	PRK                    string `json:"prk"`
	I2RSecret              string `json:"i2r_secret"`
	R2ISecret              string `json:"r2i_secret"`
	I2REnc                 string `json:"i2r_enc"`
	I2RMAC                 string `json:"i2r_mac"`
	R2IEnc                 string `json:"r2i_enc"`
	R2IMAC                 string `json:"r2i_mac"`
	I2RFinished            string `json:"i2r_finished_record_iv_aa"`
	R2IFinished            string `json:"r2i_finished_record_iv_bb"`
}

func loadHandshakeVector(t *testing.T) *handshakeVector {
	t.Helper()
	raw, err := os.ReadFile("testdata/handshake.json")
	if err != nil {
		t.Fatal(err)
	}
	v := &handshakeVector{}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatal(err)
	}
	if v.Msg1 == "" || v.Msg3 == "" || v.I2RFinished == "" {
		t.Fatal("handshake vector is missing fields")
	}
	return v
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex: %v", err)
	}
	return b
}

func checkHex(t *testing.T, what string, got []byte, want string) {
	t.Helper()
	if hex.EncodeToString(got) != want {
		t.Fatalf("%s\n got %x\nwant %s", what, got, want)
	}
}

func TestVectorHandshake(t *testing.T) {
	v := loadHandshakeVector(t)
	iPriv, err := ParsePrivateKeyPEM([]byte(v.InitiatorPrivateKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	rPriv, err := ParsePrivateKeyPEM([]byte(v.ResponderPrivateKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	iPub, err := ParsePublicKeyPEM([]byte(v.InitiatorPublicKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	rPub, err := ParsePublicKeyPEM([]byte(v.ResponderPublicKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	id := KeyID(iPub)
	checkHex(t, "initiator key id", id[:], v.InitiatorKeyID)
	id = KeyID(rPub)
	checkHex(t, "responder key id", id[:], v.ResponderKeyID)

	// Initiator: HELLO_I is deterministic given the ephemeral values.
	x, err := ecdh.X25519().NewPrivateKey(unhex(t, v.InitiatorX25519))
	if err != nil {
		t.Fatal(err)
	}
	dk, err := mlkem.NewDecapsulationKey768(unhex(t, v.InitiatorMLKEMSeed))
	if err != nil {
		t.Fatal(err)
	}
	ini := &initiator{
		cfg:    &Config{PrivateKey: iPriv, PeerKey: rPub},
		random: unhex(t, v.InitiatorRandom),
		x25519: x,
		mlkem:  dk,
	}
	m1, err := ini.hello()
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "preface || HELLO_I", m1, v.Msg1)

	// Initiator: parse and verify HELLO_R, derive the shares.
	m2 := unhex(t, v.Msg2)
	if err := ini.handleHelloR(m2); err != nil {
		t.Fatalf("HELLO_R rejected: %v", err)
	}
	checkHex(t, "x25519 shared (initiator)", ini.x25519Shared, v.X25519Shared)
	checkHex(t, "ML-KEM shared (initiator)", ini.mlkemShared, v.MLKEMShared)

	// Responder: the same X25519 share from its side.
	rx, err := ecdh.X25519().NewPrivateKey(unhex(t, v.ResponderX25519))
	if err != nil {
		t.Fatal(err)
	}
	hi, err := parseHelloI(unhex(t, v.Msg1)[prefaceLen+msgHeaderLen:])
	if err != nil {
		t.Fatal(err)
	}
	ipeer, _ := ecdh.X25519().NewPublicKey(hi.x25519)
	rShared, err := rx.ECDH(ipeer)
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "x25519 shared (responder)", rShared, v.X25519Shared)

	// Responder: verify sig_i before decrypting, then decrypt the secret.
	res := &responder{
		cfg:     &Config{PrivateKey: rPriv, Authorized: mustKeySet(t, iPub)},
		peerKey: iPub,
		m1:      unhex(t, v.Msg1),
		m2:      m2,
	}
	m3 := unhex(t, v.Msg3)
	secret, err := res.handleKeyI(context.Background(), m3)
	if err != nil {
		t.Fatalf("KEY_I rejected: %v", err)
	}
	checkHex(t, "secret", secret, v.Secret)

	// Key schedule.
	s, err := deriveSchedule(ini.m1, ini.m2, m3, secret, ini.x25519Shared, ini.mlkemShared)
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "transcript hash", s.th[:], v.TranscriptHash)
	checkHex(t, "prk", s.prk, v.PRK)
	checkHex(t, "i2r secret", s.i2r[:], v.I2RSecret)
	checkHex(t, "r2i secret", s.r2i[:], v.R2ISecret)
	for _, k := range []struct {
		name     string
		secret   [32]byte
		enc, mac string
	}{{"i2r", s.i2r, v.I2REnc, v.I2RMAC}, {"r2i", s.r2i, v.R2IEnc, v.R2IMAC}} {
		enc, mac := frame.DeriveRecordKeys(k.secret)
		checkHex(t, k.name+" enc", enc[:], k.enc)
		checkHex(t, k.name+" mac", mac[:], k.mac)
	}

	// FINISHED records carry the vector's IVs. Sealing with a chosen IV is
	// the record layer's business, checked by its own vectors; here each
	// side's derived keys must accept the other's FINISHED byte for byte.
	for _, f := range []struct {
		name   string
		record string
		iv     byte
	}{{"initiator FINISHED", v.I2RFinished, 0xaa}, {"responder FINISHED", v.R2IFinished, 0xbb}} {
		rec := unhex(t, f.record)
		if len(rec) != frame.Overhead+32 || !bytes.Equal(rec[4:20], bytes.Repeat([]byte{f.iv}, 16)) {
			t.Fatalf("%s: %d bytes, iv %x; want %d bytes with iv %02x...", f.name, len(rec), rec[4:min(20, len(rec))], frame.Overhead+32, f.iv)
		}
	}

	// Each side accepts the other's FINISHED record.
	r := frame.New(&bufConn{Buffer: *bytes.NewBuffer(unhex(t, v.I2RFinished))}, s.responderKeys(), nil)
	if err := r.ReadFinished(); err != nil {
		t.Fatalf("responder rejects the initiator's FINISHED: %v", err)
	}
	i := frame.New(&bufConn{Buffer: *bytes.NewBuffer(unhex(t, v.R2IFinished))}, s.initiatorKeys(), nil)
	if err := i.ReadFinished(); err != nil {
		t.Fatalf("initiator rejects the responder's FINISHED: %v", err)
	}
}

// TestVectorTamperedMessages: any flipped byte in HELLO_R or KEY_I of the
// vector is rejected by the side that checks it.
func TestVectorTamperedMessages(t *testing.T) {
	v := loadHandshakeVector(t)
	iPriv, _ := ParsePrivateKeyPEM([]byte(v.InitiatorPrivateKeyPEM))
	rPriv, _ := ParsePrivateKeyPEM([]byte(v.ResponderPrivateKeyPEM))
	m1, m2, m3 := unhex(t, v.Msg1), unhex(t, v.Msg2), unhex(t, v.Msg3)
	x, _ := ecdh.X25519().NewPrivateKey(unhex(t, v.InitiatorX25519))
	dk, _ := mlkem.NewDecapsulationKey768(unhex(t, v.InitiatorMLKEMSeed))
	step := 7 // every 7th byte keeps the test quick; RSA verifies dominate
	for i := msgHeaderLen; i < len(m2); i += step {
		mod := bytes.Clone(m2)
		mod[i] ^= 0x10
		ini := &initiator{cfg: &Config{PrivateKey: iPriv, PeerKey: &rPriv.PublicKey}, m1: m1, x25519: x, mlkem: dk}
		if err := ini.handleHelloR(mod); err == nil {
			t.Fatalf("HELLO_R with byte %d flipped was accepted", i)
		}
	}
	for i := msgHeaderLen; i < len(m3); i += step {
		mod := bytes.Clone(m3)
		mod[i] ^= 0x10
		res := &responder{cfg: &Config{PrivateKey: rPriv}, peerKey: &iPriv.PublicKey, m1: m1, m2: m2}
		if _, err := res.handleKeyI(context.Background(), mod); err == nil {
			t.Fatalf("KEY_I with byte %d flipped was accepted", i)
		}
	}
	// sig_i covers M1 and M2: a KEY_I replayed into another transcript fails.
	other := bytes.Clone(m1)
	other[20] ^= 1
	res := &responder{cfg: &Config{PrivateKey: rPriv}, peerKey: &iPriv.PublicKey, m1: other, m2: m2}
	if _, err := res.handleKeyI(context.Background(), m3); err == nil {
		t.Fatal("KEY_I accepted under another transcript")
	}
}
