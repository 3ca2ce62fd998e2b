package handshake

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"testing"
	"testing/cryptotest"
	"time"

	"github.com/tunnel-dev/tunnel/frame"
)

var updateResume = flag.Bool("update-resume", false, "rewrite testdata/vectors-resume.json from the code (go test -run TestVectorResumeReproduce -update-resume)")

const vectorsResumePath = "testdata/vectors-resume.json"

// resumeVector mirrors testdata/vectors-resume.json: a full version 2
// handshake that negotiates resumption, then a resumption of its session,
// then the first two records the initiator sends on the resumed connection.
type resumeVector struct {
	Description            string `json:"description"`
	Seed                   uint64 `json:"crypto_rand_seed"`
	InitiatorPrivateKeyPEM string `json:"initiator_private_key_pem"`
	InitiatorPublicKeyPEM  string `json:"initiator_public_key_pem"`
	ResponderPrivateKeyPEM string `json:"responder_private_key_pem"`
	ResponderPublicKeyPEM  string `json:"responder_public_key_pem"`
	Time                   uint64 `json:"time"`
	ResumeWindow           uint32 `json:"resume_window_seconds"`

	// The full handshake.
	InitiatorRandom    string `json:"initiator_random"`
	InitiatorX25519    string `json:"initiator_x25519_private"`
	InitiatorMLKEMSeed string `json:"initiator_mlkem768_seed"`
	HelloIExt          string `json:"hello_i_ext_block"`
	HelloRExt          string `json:"hello_r_ext_block"`
	Msg1               string `json:"msg1_preface_and_hello_i"`
	Msg2               string `json:"msg2_hello_r"`
	Msg3               string `json:"msg3_key_i"`
	TranscriptHash     string `json:"transcript_hash"`
	PRK                string `json:"prk"`
	SessionID          string `json:"session_id"`
	RS                 string `json:"rs"`

	// The resumption.
	ResumeRandom         string `json:"resume_initiator_random"`
	ResumeX25519         string `json:"resume_initiator_x25519_private"`
	KI                   string `json:"k_i"`
	KR                   string `json:"k_r"`
	KF                   string `json:"k_f"`
	ResumeMsg1           string `json:"resume_msg1_preface_and_resume_i"`
	MacIDigest           string `json:"mac_i_digest"`
	MacI                 string `json:"mac_i"`
	ResumeMsg2           string `json:"resume_msg2_resume_r"`
	MacRDigest           string `json:"mac_r_digest"`
	MacR                 string `json:"mac_r"`
	ResumeMsg3           string `json:"resume_msg3_resume_f"`
	MacFDigest           string `json:"mac_f_digest"`
	MacF                 string `json:"mac_f"`
	ResumeX25519Shared   string `json:"resume_x25519_shared"`
	ResumeTranscriptHash string `json:"resume_transcript_hash"`
	ResumePRK            string `json:"resume_prk"`
	ResumeI2R            string `json:"resume_i2r_secret"`
	ResumeR2I            string `json:"resume_r2i_secret"`
	ResumeI2REnc         string `json:"resume_i2r_enc"`
	ResumeI2RMAC         string `json:"resume_i2r_mac"`
	ResumeR2IEnc         string `json:"resume_r2i_enc"`
	ResumeR2IMAC         string `json:"resume_r2i_mac"`
	FinishedIV           string `json:"i2r_finished_iv"`
	FinishedRecord       string `json:"i2r_finished_record_seq0"`
	AckIV                string `json:"i2r_ack_iv"`
	AckReceived          uint64 `json:"i2r_ack_received"`
	AckReply             bool   `json:"i2r_ack_reply"`
	AckRecord            string `json:"i2r_ack_record_seq1"`
}

// resumeVectorSides returns the full handshake's initiator (its ephemeral
// values fixed) and responder, both offering/accepting resumption, at v.Time.
func resumeVectorSides(t *testing.T, v *resumeVector) (*initiator, *responder) {
	t.Helper()
	ini, res := v2Sides(t, &v2Vector{
		InitiatorPrivateKeyPEM: v.InitiatorPrivateKeyPEM, ResponderPrivateKeyPEM: v.ResponderPrivateKeyPEM, Time: v.Time,
		InitiatorRandom: v.InitiatorRandom, InitiatorX25519: v.InitiatorX25519, InitiatorMLKEMSeed: v.InitiatorMLKEMSeed,
	})
	w := time.Duration(v.ResumeWindow) * time.Second
	ini.cfg.ResumeWindow, res.cfg.ResumeWindow = w, w
	return ini, res
}

// resumeSides returns the resumption's initiator (its random and X25519
// key fixed) and responder for the ticket of v, whose store holds it.
func resumeSides(t *testing.T, v *resumeVector) (*resumer, *responder) {
	t.Helper()
	ini, res := resumeVectorSides(t, v)
	tk := Ticket{ID: [SessionIDLen]byte(unhex(t, v.SessionID)), Secret: [32]byte(unhex(t, v.RS)), Window: time.Duration(v.ResumeWindow) * time.Second}
	x, err := ecdh.X25519().NewPrivateKey(unhex(t, v.ResumeX25519))
	if err != nil {
		t.Fatal(err)
	}
	st := &resumer{cfg: ini.cfg, t: tk, keys: deriveResumeKeys(tk.Secret), peerKey: ini.cfg.PeerKey, random: [randomLen]byte(unhex(t, v.ResumeRandom)), x25519: x}
	st.t.PeerKeyID = KeyID(ini.cfg.PeerKey)
	rt := tk
	rt.PeerKeyID = KeyID(&ini.cfg.PrivateKey.PublicKey)
	store := &sessionStore{}
	store.add(rt)
	res.cfg.Sessions = store
	return st, res
}

// sealRecordByHand seals one record as PROTOCOL.md section 3 says, with
// crypto/cipher's CFB rather than package frame's: an independent check
// of the records the vector holds.
func sealRecordByHand(s [32]byte, seq uint64, iv []byte, typ byte, payload []byte) []byte {
	enc, mk := frame.DeriveRecordKeys(s)
	block, _ := aes.NewCipher(enc[:])
	plain := append([]byte{typ}, payload...)
	ct := make([]byte, len(plain))
	//lint:ignore SA1019 the protocol mandates AES-CFB.
	cipher.NewCFBEncrypter(block, iv).XORKeyStream(ct, plain)
	rec := binary.BigEndian.AppendUint32(nil, uint32(len(iv)+len(ct)+32))
	rec = append(append(rec, iv...), ct...)
	m := hmac.New(sha256.New, mk[:])
	m.Write(binary.BigEndian.AppendUint64(nil, seq))
	m.Write(rec)
	return m.Sum(rec)
}

// makeResumeVector runs both handshakes step by step in one goroutine,
// crypto/rand seeded for everything not fixed, as makeV2Vector does.
func makeResumeVector(t *testing.T) *resumeVector {
	t.Helper()
	v2 := loadV2Vector(t)
	v := &resumeVector{
		Description: "A version 2 handshake that negotiates session resumption (PROTOCOL-v2.md section 6.1), then a resumption " +
			"of its session on a new connection (section 6.3), then the initiator's first two records on it: FINISHED (seq 0) " +
			"and an ACK (seq 1, section 6.2). The keys are those of vectors-v2.json; the initiator's ephemeral values are given; " +
			"everything else is drawn from Go's crypto/rand seeded with crypto_rand_seed (testing/cryptotest.SetGlobalRandom), so that " +
			"this implementation reproduces every byte. Another implementation must accept the messages of both sides (the " +
			"responder's clock reading time, its session store holding session_id with rs and the initiator's key id), " +
			"derive exactly these secrets and keys, and seal the two records with the IVs given. Digests are the SHA-256 " +
			"values each MAC is computed over (mac = HMAC-SHA256(k, digest)).",
		Seed:                   3,
		InitiatorPrivateKeyPEM: v2.InitiatorPrivateKeyPEM,
		InitiatorPublicKeyPEM:  v2.InitiatorPublicKeyPEM,
		ResponderPrivateKeyPEM: v2.ResponderPrivateKeyPEM,
		ResponderPublicKeyPEM:  v2.ResponderPublicKeyPEM,
		Time:                   v2.Time,
		ResumeWindow:           60,
		InitiatorRandom:        v2.InitiatorRandom,
		InitiatorX25519:        v2.InitiatorX25519,
		InitiatorMLKEMSeed:     v2.InitiatorMLKEMSeed,
		ResumeRandom:           hex.EncodeToString(bytes.Repeat([]byte{0x77}, randomLen)),
		ResumeX25519:           hex.EncodeToString(bytes.Repeat([]byte{0x88}, 32)),
		FinishedIV:             hex.EncodeToString(bytes.Repeat([]byte{0x31}, 16)),
		AckIV:                  hex.EncodeToString(bytes.Repeat([]byte{0x32}, 16)),
		AckReceived:            123456789,
		AckReply:               true,
	}
	cryptotest.SetGlobalRandom(t, v.Seed)
	ctx := context.Background()

	ini, res := resumeVectorSides(t, v)
	m1, err := ini.hello()
	if err != nil {
		t.Fatal(err)
	}
	res.m1 = m1
	hi, err := res.checkHelloI2(m1[prefaceLen:])
	if err != nil {
		t.Fatalf("HELLO_I rejected: %v", err)
	}
	m2, err := res.helloR(ctx, &hi.helloI)
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
	if _, err := res.handleKeyI(ctx, m3); err != nil {
		t.Fatalf("KEY_I: %v", err)
	}
	if ini.ticket == nil || res.ticket == nil || ini.ticket.ID != res.ticket.ID {
		t.Fatal("resumption not negotiated")
	}
	h2, _ := parseHelloR2(m2[msgHeaderLen:])
	sched, err := deriveSchedule(m1, m2, m3, secret, ini.x25519Shared, ini.mlkemShared)
	if err != nil {
		t.Fatal(err)
	}
	rs := sched.resumptionSecret()
	v.HelloIExt, v.HelloRExt = hex.EncodeToString(hi.ext), hex.EncodeToString(h2.ext)
	v.Msg1, v.Msg2, v.Msg3 = hex.EncodeToString(m1), hex.EncodeToString(m2), hex.EncodeToString(m3)
	v.TranscriptHash, v.PRK = hex.EncodeToString(sched.th[:]), hex.EncodeToString(sched.prk)
	v.SessionID, v.RS = hex.EncodeToString(ini.ticket.ID[:]), hex.EncodeToString(rs[:])

	st, rres := resumeSides(t, v)
	r1 := st.resumeI()
	rres.m1 = r1
	ri, err := rres.checkResumeI(r1)
	if err != nil {
		t.Fatalf("RESUME_I rejected: %v", err)
	}
	r2, err := rres.resumeR(ri)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.handleResumeR(r2); err != nil {
		t.Fatalf("RESUME_R rejected: %v", err)
	}
	r3 := st.resumeF()
	if err := rres.checkResumeF(r3); err != nil {
		t.Fatalf("RESUME_F rejected: %v", err)
	}
	v.ResumeMsg1, v.ResumeMsg2, v.ResumeMsg3 = hex.EncodeToString(r1), hex.EncodeToString(r2), hex.EncodeToString(r3)
	fillResume(t, v, st.keys, r1, r2, r3, st.x25519Shared)
	return v
}

// fillResume fills what follows from the three messages, rs's keys and
// the X25519 shared secret: digests, MACs, the schedule and the records.
func fillResume(t *testing.T, v *resumeVector, k resumeKeys, r1, r2, r3, shared []byte) {
	t.Helper()
	v.KI, v.KR, v.KF = hex.EncodeToString(k.i[:]), hex.EncodeToString(k.r[:]), hex.EncodeToString(k.f[:])
	v.MacIDigest = hex.EncodeToString(digest(r1[:len(r1)-macLen]))
	v.MacI = hex.EncodeToString(r1[len(r1)-macLen:])
	v.MacRDigest = hex.EncodeToString(digest(r1, r2[:len(r2)-macLen]))
	v.MacR = hex.EncodeToString(r2[len(r2)-macLen:])
	v.MacFDigest = hex.EncodeToString(digest(r1, r2))
	v.MacF = hex.EncodeToString(r3[msgHeaderLen:])
	v.ResumeX25519Shared = hex.EncodeToString(shared)
	s, err := deriveResumeSchedule(r1, r2, r3, [32]byte(unhex(t, v.RS)), shared)
	if err != nil {
		t.Fatal(err)
	}
	v.ResumeTranscriptHash, v.ResumePRK = hex.EncodeToString(s.th[:]), hex.EncodeToString(s.prk)
	v.ResumeI2R, v.ResumeR2I = hex.EncodeToString(s.i2r[:]), hex.EncodeToString(s.r2i[:])
	enc, mac := frame.DeriveRecordKeys(s.i2r)
	v.ResumeI2REnc, v.ResumeI2RMAC = hex.EncodeToString(enc[:]), hex.EncodeToString(mac[:])
	enc, mac = frame.DeriveRecordKeys(s.r2i)
	v.ResumeR2IEnc, v.ResumeR2IMAC = hex.EncodeToString(enc[:]), hex.EncodeToString(mac[:])
	v.FinishedRecord = hex.EncodeToString(sealRecordByHand(s.i2r, 0, unhex(t, v.FinishedIV), 0x01, s.th[:]))
	ack := binary.BigEndian.AppendUint64(nil, v.AckReceived)
	if v.AckReply {
		ack = append(ack, 1)
	} else {
		ack = append(ack, 0)
	}
	v.AckRecord = hex.EncodeToString(sealRecordByHand(s.i2r, 1, unhex(t, v.AckIV), 0x04, ack))
}

func loadResumeVector(t testing.TB) *resumeVector {
	t.Helper()
	raw, err := os.ReadFile(vectorsResumePath)
	if err != nil {
		t.Fatal(err)
	}
	v := &resumeVector{}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatal(err)
	}
	if v.Msg1 == "" || v.ResumeMsg3 == "" || v.AckRecord == "" {
		t.Fatal("resumption vector is missing fields")
	}
	return v
}

// TestVectorResumeReproduce: the code makes the vector byte for byte. With
// -update-resume it rewrites it instead.
func TestVectorResumeReproduce(t *testing.T) {
	got := makeResumeVector(t)
	gj, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if *updateResume {
		if err := os.WriteFile(vectorsResumePath, append(gj, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	wj, _ := json.MarshalIndent(loadResumeVector(t), "", "  ")
	if !bytes.Equal(gj, wj) {
		t.Fatalf("the code no longer makes %s:\n got %s\nwant %s", vectorsResumePath, gj, wj)
	}
}

// TestVectorResumeVerify checks the vector as another implementation
// would: each side accepts the other's messages of both handshakes, the
// secrets and keys are the vector's, and package frame opens the two
// records, the ACK reaching OnAck.
func TestVectorResumeVerify(t *testing.T) {
	v := loadResumeVector(t)
	ctx := context.Background()
	ini, res := resumeVectorSides(t, v)
	m1, m2, m3 := unhex(t, v.Msg1), unhex(t, v.Msg2), unhex(t, v.Msg3)
	res.m1 = m1
	hi, err := res.checkHelloI2(m1[prefaceLen:])
	if err != nil || !res.offered {
		t.Fatalf("HELLO_I rejected (%v) or offers no resumption", err)
	}
	checkHex(t, "HELLO_I extension block", hi.ext, v.HelloIExt)
	ini.m1, ini.offered = m1, true
	if err := ini.handleHelloR(m2); err != nil || ini.ticket == nil {
		t.Fatalf("HELLO_R rejected (%v) or accepts no resumption", err)
	}
	checkHex(t, "session_id", ini.ticket.ID[:], v.SessionID)
	if ini.ticket.Window != time.Duration(v.ResumeWindow)*time.Second {
		t.Fatalf("window %v", ini.ticket.Window)
	}
	res.m2, res.peerKey = m2, &ini.cfg.PrivateKey.PublicKey
	secret, err := res.handleKeyI(ctx, m3)
	if err != nil {
		t.Fatalf("KEY_I rejected: %v", err)
	}
	sched, err := deriveSchedule(m1, m2, m3, secret, ini.x25519Shared, ini.mlkemShared)
	if err != nil {
		t.Fatal(err)
	}
	checkHex(t, "prk", sched.prk, v.PRK)
	rs := sched.resumptionSecret()
	checkHex(t, "rs", rs[:], v.RS)

	st, rres := resumeSides(t, v)
	r1, r2, r3 := unhex(t, v.ResumeMsg1), unhex(t, v.ResumeMsg2), unhex(t, v.ResumeMsg3)
	rres.m1 = r1
	if _, err := rres.checkResumeI(r1); err != nil {
		t.Fatalf("RESUME_I rejected: %v", err)
	}
	st.m1 = r1
	if err := st.handleResumeR(r2); err != nil {
		t.Fatalf("RESUME_R rejected: %v", err)
	}
	rres.m2 = r2
	if err := rres.checkResumeF(r3); err != nil {
		t.Fatalf("RESUME_F rejected: %v", err)
	}
	got := &resumeVector{RS: v.RS, FinishedIV: v.FinishedIV, AckIV: v.AckIV, AckReceived: v.AckReceived, AckReply: v.AckReply}
	fillResume(t, got, st.keys, r1, r2, r3, st.x25519Shared)
	for _, c := range [][3]string{
		{"k_i", got.KI, v.KI}, {"k_r", got.KR, v.KR}, {"k_f", got.KF, v.KF},
		{"mac_i digest", got.MacIDigest, v.MacIDigest}, {"mac_r digest", got.MacRDigest, v.MacRDigest}, {"mac_f digest", got.MacFDigest, v.MacFDigest},
		{"x25519 shared", got.ResumeX25519Shared, v.ResumeX25519Shared},
		{"transcript hash", got.ResumeTranscriptHash, v.ResumeTranscriptHash}, {"prk", got.ResumePRK, v.ResumePRK},
		{"i2r secret", got.ResumeI2R, v.ResumeI2R}, {"r2i secret", got.ResumeR2I, v.ResumeR2I},
		{"i2r enc", got.ResumeI2REnc, v.ResumeI2REnc}, {"i2r mac", got.ResumeI2RMAC, v.ResumeI2RMAC},
		{"r2i enc", got.ResumeR2IEnc, v.ResumeR2IEnc}, {"r2i mac", got.ResumeR2IMAC, v.ResumeR2IMAC},
		{"FINISHED record", got.FinishedRecord, v.FinishedRecord}, {"ACK record", got.AckRecord, v.AckRecord},
	} {
		if c[1] != c[2] {
			t.Errorf("%s: got %s, want %s", c[0], c[1], c[2])
		}
	}

	// The responder's record layer opens both records.
	var acks [][2]uint64
	stream := append(unhex(t, v.FinishedRecord), unhex(t, v.AckRecord)...)
	keys := frame.Keys{Recv: [32]byte(unhex(t, v.ResumeI2R)), Transcript: [32]byte(unhex(t, v.ResumeTranscriptHash))}
	fc := frame.New(&bufConn{*bytes.NewBuffer(stream)}, keys, &frame.Config{Acks: true, OnAck: func(received uint64, reply bool) {
		r := uint64(0)
		if reply {
			r = 1
		}
		acks = append(acks, [2]uint64{received, r})
	}})
	if _, err := fc.Read(make([]byte, 1)); !errors.Is(err, frame.ErrTruncated) {
		t.Fatalf("reading the records: %v, want ErrTruncated after them", err)
	}
	if len(acks) != 1 || acks[0] != [2]uint64{v.AckReceived, 1} {
		t.Fatalf("ACKs read: %v", acks)
	}
}

// TestVectorResumeTampered: a flipped bit in any byte of RESUME_I
// (preface and header included: mac_i covers them), RESUME_R (header
// included) or RESUME_F's body is refused by the side that checks it, with
// the ALERT of the field it hit.
func TestVectorResumeTampered(t *testing.T) {
	v := loadResumeVector(t)
	r1, r2, r3 := unhex(t, v.ResumeMsg1), unhex(t, v.ResumeMsg2), unhex(t, v.ResumeMsg3)
	const (
		idAt  = prefaceLen + msgHeaderLen
		keyAt = idAt + SessionIDLen
		rndAt = keyAt + KeyIDLen
	)
	for i := range r1 {
		want := AlertBadSignature // preface, header, random_i, x25519_i, mac_i
		switch {
		case i >= idAt && i < keyAt:
			want = AlertUnknownSession
		case i >= keyAt && i < rndAt:
			want = AlertUnknownKey
		}
		mod := bytes.Clone(r1)
		mod[i] ^= 0x10
		_, res := resumeSides(t, v)
		res.m1 = mod
		_, err := res.checkResumeI(mod)
		if code := alertOf(err); code != want {
			t.Fatalf("RESUME_I with byte %d flipped: %v (ALERT %v), want ALERT %v", i, err, code, want)
		}
	}
	for i := range r2 {
		mod := bytes.Clone(r2)
		mod[i] ^= 0x10
		st, _ := resumeSides(t, v)
		st.m1 = r1
		if code := alertOf(st.handleResumeR(mod)); code != AlertBadSignature {
			t.Fatalf("RESUME_R with byte %d flipped: ALERT %v, want bad_signature", i, code)
		}
	}
	for i := msgHeaderLen; i < len(r3); i++ {
		mod := bytes.Clone(r3)
		mod[i] ^= 0x10
		_, res := resumeSides(t, v)
		res.m1 = r1
		if _, err := res.checkResumeI(r1); err != nil {
			t.Fatal(err)
		}
		res.m2 = r2
		if code := alertOf(res.checkResumeF(mod)); code != AlertBadSignature {
			t.Fatalf("RESUME_F with byte %d flipped: ALERT %v, want bad_signature", i, code)
		}
	}
	// Wrong lengths are protocol errors, before any MAC.
	for name, f := range map[string]func() error{
		"RESUME_I short": func() error { _, err := parseResumeI(r1[idAt : len(r1)-1]); return err },
		"RESUME_R long":  func() error { _, err := parseResumeR(append(bytes.Clone(r2[msgHeaderLen:]), 0)); return err },
		"RESUME_F short": func() error { _, err := parseResumeF(r3[msgHeaderLen : len(r3)-1]); return err },
	} {
		if err := f(); !errors.Is(err, errMalformed) {
			t.Errorf("%s: %v, want malformed", name, err)
		}
	}
}

// alertOf is the ALERT code a local rejection sends, 0 for none.
func alertOf(err error) AlertCode {
	var r *rejection
	if errors.As(err, &r) {
		return r.code
	}
	return 0
}
