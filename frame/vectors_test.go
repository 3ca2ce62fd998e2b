package frame

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
)

// recordVectors mirrors testdata/records.json, copied from shared/vectors.
type recordVectors struct {
	S0, S1  string
	K0Enc   string `json:"k0_enc"`
	K0MAC   string `json:"k0_mac"`
	K1Enc   string `json:"k1_enc"`
	K1MAC   string `json:"k1_mac"`
	Records []recordVector
}

type recordVector struct {
	Comment     string
	Seq         uint64
	Keys        string
	IV          string
	Type        byte
	Payload     *string
	PayloadRule string `json:"payload_rule"`
	Record      string
	Valid       bool
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

func secret(t *testing.T, s string) (out [SecretLen]byte) {
	t.Helper()
	if copy(out[:], unhex(t, s)) != SecretLen {
		t.Fatalf("secret %q is not 32 bytes", s)
	}
	return out
}

func loadRecordVectors(t *testing.T) recordVectors {
	t.Helper()
	raw, err := os.ReadFile("testdata/records.json")
	if err != nil {
		t.Fatal(err)
	}
	var v recordVectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Records) == 0 {
		t.Fatal("no record vectors")
	}
	return v
}

// payload returns the vector's payload, expanding "pattern:N" (byte i = i mod 251).
func (r recordVector) payload(t *testing.T) []byte {
	if r.Payload != nil {
		return unhex(t, *r.Payload)
	}
	n, err := strconv.Atoi(strings.TrimPrefix(r.PayloadRule, "pattern:"))
	if err != nil {
		t.Fatalf("%s: payload rule %q", r.Comment, r.PayloadRule)
	}
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i % 251)
	}
	return p
}

func TestVectorKeySchedule(t *testing.T) {
	v := loadRecordVectors(t)
	s0 := secret(t, v.S0)
	if got := NextSecret(s0); got != secret(t, v.S1) {
		t.Fatalf("next(s0) = %x, want %s", got, v.S1)
	}
	for _, k := range []struct{ s, enc, mac string }{{v.S0, v.K0Enc, v.K0MAC}, {v.S1, v.K1Enc, v.K1MAC}} {
		enc, mac := DeriveRecordKeys(secret(t, k.s))
		if hex.EncodeToString(enc[:]) != k.enc || hex.EncodeToString(mac[:]) != k.mac {
			t.Fatalf("keys of %s: enc %x mac %x", k.s, enc, mac)
		}
	}
}

// TestVectorRecordsSeal writes the valid records through the public API with
// the vectors' IVs and checks the bytes on the wire, record for record.
func TestVectorRecordsSeal(t *testing.T) {
	v := loadRecordVectors(t)
	var valid []recordVector
	var ivs []byte
	for _, r := range v.Records {
		if r.Valid {
			valid = append(valid, r)
			ivs = append(ivs, unhex(t, r.IV)...)
		}
	}
	finished := valid[0].payload(t)
	mc := &memConn{}
	// Five records under k0 (FINISHED and four DATA), then KEY_UPDATE.
	c := New(mc, Keys{Send: secret(t, v.S0), Transcript: [32]byte(finished)}, &Config{KeyUpdateRecords: 5})
	c.out.iv.r = bytes.NewReader(ivs)
	for i, r := range valid {
		if r.Seq != uint64(i) {
			t.Fatalf("vector %q: seq %d, expected the valid records in order", r.Comment, r.Seq)
		}
		start := mc.w.Len()
		switch r.Type {
		case typeFinished:
			if err := c.SendFinished(); err != nil {
				t.Fatal(err)
			}
		case typeData:
			p := r.payload(t)
			if len(p) == 0 { // Write sends nothing for nothing: seal it directly.
				c.out.mu.Lock()
				err := c.out.seal(typeData, 0)
				c.out.mu.Unlock()
				if err != nil {
					t.Fatal(err)
				}
			} else if _, err := c.Write(p); err != nil {
				t.Fatal(err)
			}
		case typeKeyUpdate:
			continue // sent by the following Write, on its own
		case typeClose:
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
		}
		got := mc.w.Bytes()[start:]
		if r.Type == typeData && i > 0 && valid[i-1].Type == typeKeyUpdate {
			ku := unhex(t, valid[i-1].Record)
			if !bytes.HasPrefix(got, ku) {
				t.Fatalf("%s: KEY_UPDATE on the wire\n got %x\nwant %x", valid[i-1].Comment, got[:min(len(got), len(ku))], ku)
			}
			got = got[len(ku):]
		}
		if want := unhex(t, r.Record); !bytes.Equal(got, want) {
			t.Fatalf("%s: on the wire\n got %x\nwant %x", r.Comment, got, want)
		}
	}
}

// TestVectorRecordsOpen reads every valid record with readRecord, which
// switches keys on KEY_UPDATE by itself, and checks its type and payload,
// then reads the whole stream through Read.
func TestVectorRecordsOpen(t *testing.T) {
	v := loadRecordVectors(t)
	var stream, data []byte
	var finished [32]byte
	for _, r := range v.Records {
		if !r.Valid {
			continue
		}
		stream = append(stream, unhex(t, r.Record)...)
		if r.Type == typeFinished {
			finished = [32]byte(r.payload(t))
		}
		if r.Type == typeData {
			data = append(data, r.payload(t)...)
		}
	}
	keys := Keys{Recv: secret(t, v.S0), Transcript: finished}

	// Decrypted in place, and straight into a buffer with room.
	for _, dst := range [][]byte{nil, make([]byte, MaxPayload)} {
		c := New(&memConn{r: bytes.NewReader(stream)}, keys, nil)
		for _, r := range v.Records {
			if !r.Valid {
				continue
			}
			typ, payload, err := c.in.readRecord(dst)
			if err != nil {
				t.Fatalf("%s: %v", r.Comment, err)
			}
			if typ != r.Type || !bytes.Equal(payload, r.payload(t)) {
				t.Fatalf("%s, buffer of %d bytes: got type %d payload %x", r.Comment, len(dst), typ, payload)
			}
		}
	}

	got, err := readAll(New(&memConn{r: bytes.NewReader(stream)}, keys, nil))
	if err != io.EOF || !bytes.Equal(got, data) {
		t.Fatalf("stream: %d bytes, err %v; want %d bytes and io.EOF", len(got), err, len(data))
	}
}

func TestVectorRecordsReject(t *testing.T) {
	v := loadRecordVectors(t)
	n := 0
	for _, r := range v.Records {
		if r.Valid {
			continue
		}
		n++
		t.Run(r.Comment, func(t *testing.T) {
			c := New(&memConn{r: bytes.NewReader(unhex(t, r.Record))}, Keys{Recv: secret(t, v.S0)}, nil)
			c.in.seq = r.Seq
			c.in.finished = r.Seq > 0
			typ, payload, err := c.in.readRecord(nil)
			if err == nil {
				t.Fatalf("accepted: type %d payload %x", typ, payload)
			}
			if !errors.Is(err, ErrAuth) && !errors.Is(err, ErrLength) && !errors.Is(err, ErrTruncated) {
				t.Fatalf("err = %v, want ErrAuth, ErrLength or ErrTruncated", err)
			}
			if !c.conn.(*memConn).closed {
				t.Fatal("connection left open after a bad record")
			}
		})
	}
	if n == 0 {
		t.Fatal("no invalid vectors")
	}
}
