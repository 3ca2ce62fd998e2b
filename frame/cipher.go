package frame

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"hash"
	"math"
)

// recordCipher is the key material of one direction under one traffic
// secret. It is owned by exactly one half and used under its lock.
type recordCipher struct {
	secret [SecretLen]byte
	block  cipher.Block
	mac    hash.Hash

	// ks and prev are CFB scratch, here so that they need no allocation
	// (a stack array passed to block.Encrypt would escape); both are wiped
	// after each use.
	ks     [decryptBatch * aes.BlockSize]byte
	prev   [aes.BlockSize]byte
	active [maxBatch][]byte // cfbEncrypt's records in progress
}

// newRecordCipher derives enc(s) and mac(s) from the traffic secret s.
// The derived keys are wiped once the cipher and the MAC hold them.
func newRecordCipher(secret [SecretLen]byte) *recordCipher {
	enc := expand(secret[:], labelEnc)
	mk := expand(secret[:], labelMAC)
	defer clear(enc)
	defer clear(mk)
	block, err := aes.NewCipher(enc)
	if err != nil {
		panic("frame: aes.NewCipher with a 32-byte key: " + err.Error())
	}
	return &recordCipher{secret: secret, block: block, mac: hmac.New(sha256.New, mk)}
}

// next returns the cipher of next(s), used after a KEY_UPDATE, and wipes s
// from c: c must not be used again.
func (c *recordCipher) next() *recordCipher {
	s := NextSecret(c.secret)
	n := newRecordCipher(s)
	clear(s[:])
	clear(c.secret[:])
	return n
}

// expand is HKDF-Expand(secret, label, 32) with SHA-256.
func expand(secret []byte, label string) []byte {
	out, err := hkdf.Expand(sha256.New, secret, label, SecretLen)
	if err != nil {
		panic("frame: hkdf.Expand of 32 bytes: " + err.Error())
	}
	return out
}

// DeriveRecordKeys returns enc(s) and mac(s) for a traffic secret s. It is
// exported for tests and tools that check the key schedule; a Conn derives
// its own keys.
func DeriveRecordKeys(secret [SecretLen]byte) (enc, mac [SecretLen]byte) {
	copy(enc[:], expand(secret[:], labelEnc))
	copy(mac[:], expand(secret[:], labelMAC))
	return enc, mac
}

// NextSecret returns next(s), the traffic secret after a KEY_UPDATE.
func NextSecret(secret [SecretLen]byte) (next [SecretLen]byte) {
	out := expand(secret[:], labelNext)
	copy(next[:], out)
	clear(out)
	return next
}

// The record layer uses AES-256 in CFB mode with 128-bit feedback, as the
// protocol requires: it is what Go's deprecated cipher.NewCFBEncrypter
// computes. CFB is malleable on its own; it is safe here only because every
// record is authenticated (encrypt-then-MAC) and the tag is verified before a
// single byte is decrypted. It is written out rather than taken from
// crypto/cipher so that no record allocates a fresh Stream, and so that the
// AES unit is kept busy: one CFB encryption is a chain in which every block
// waits for the one before, so the blocks of several records are encrypted
// in turn (their chains are independent and the CPU overlaps them), and
// decryption, whose inputs are all known, computes decryptBatch keystream
// blocks before it XORs them in.

// A region is one record's iv followed by its body: block i of the body is
// enciphered with the keystream of the region's block i, the iv or the
// ciphertext block before it.

// cfbEncrypt encrypts the bodies of regions in place, interleaving the
// records block by block. len(regions) is at most maxBatch.
func (c *recordCipher) cfbEncrypt(regions [][]byte) {
	const bs = aes.BlockSize
	ks := c.ks[:]
	// Whole blocks, in phases: in each, the records that still have whole
	// blocks left advance together up to the shortest of them.
	for off := 0; ; {
		act, end := c.active[:0], math.MaxInt
		for _, r := range regions {
			if len(r) >= off+2*bs {
				act = append(act, r)
				end = min(end, len(r))
			}
		}
		if len(act) == 0 {
			break
		}
		for ; off+2*bs <= end; off += bs {
			for i, r := range act {
				c.block.Encrypt(ks[i*bs:(i+1)*bs], r[off:off+bs])
			}
			for i, r := range act {
				xorBlock(r[off+bs:off+2*bs], ks[i*bs:(i+1)*bs])
			}
		}
	}
	// The last, partial block of each record.
	for _, r := range regions {
		if tail := (len(r) - bs) % bs; tail > 0 {
			p := len(r) - tail
			c.block.Encrypt(ks[:bs], r[p-bs:p])
			subtle.XORBytes(r[p:], r[p:], ks[:tail])
		}
	}
	clear(c.ks[:])
	clear(c.active[:])
}

// xorBlock XORs the block k into the block b. Inlined, it costs a small
// part of subtle.XORBytes's call for one block.
func xorBlock(b, k []byte) {
	b, k = b[:aes.BlockSize], k[:aes.BlockSize]
	binary.LittleEndian.PutUint64(b, binary.LittleEndian.Uint64(b)^binary.LittleEndian.Uint64(k))
	binary.LittleEndian.PutUint64(b[8:], binary.LittleEndian.Uint64(b[8:])^binary.LittleEndian.Uint64(k[8:]))
}

// cfbDecrypt decrypts the body of region in place.
func (c *recordCipher) cfbDecrypt(region []byte) {
	c.cfbDecryptTo(region[aes.BlockSize:], region)
}

// cfbDecryptTo writes the plaintext of region's body to dst, which holds
// len(region)-BlockSize bytes and is either that body (in place) or
// disjoint from region.
func (c *recordCipher) cfbDecryptTo(dst, region []byte) {
	ks, prev := c.ks[:], c.prev[:]
	copy(prev, region[:aes.BlockSize])
	body := region[aes.BlockSize:]
	for len(body) > 0 {
		n := min(len(body), len(ks))
		c.block.Encrypt(ks, prev)
		for j := aes.BlockSize; j < n; j += aes.BlockSize {
			c.block.Encrypt(ks[j:], body[j-aes.BlockSize:j])
		}
		if n == len(ks) {
			copy(prev, body[n-aes.BlockSize:n])
		}
		subtle.XORBytes(dst[:n], body[:n], ks[:n])
		body, dst = body[n:], dst[n:]
	}
	clear(c.ks[:])
	clear(c.prev[:])
}

// cfbDecryptSplit decrypts a region whose body is at least one block: the
// body's first byte is returned and the rest written to dst, which holds
// len(region)-BlockSize-1 bytes and is disjoint from region. region is left
// as it was.
func (c *recordCipher) cfbDecryptSplit(dst, region []byte) byte {
	const bs = aes.BlockSize
	var first [bs]byte
	c.cfbDecryptTo(first[:], region[:2*bs])
	typ := first[0]
	copy(dst, first[1:])
	clear(first[:])
	// The first ciphertext block, still in region, is the iv of the rest.
	c.cfbDecryptTo(dst[bs-1:], region[bs:])
	return typ
}
