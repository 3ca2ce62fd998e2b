package frame

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"hash"
)

// recordCipher is the key material of one direction under one traffic
// secret. It is owned by exactly one half and used under its lock.
type recordCipher struct {
	secret [SecretLen]byte
	block  cipher.Block
	mac    hash.Hash

	// ks and prev are CFB scratch, here so that they need no allocation
	// (a stack array passed to block.Encrypt would escape).
	ks, prev [aes.BlockSize]byte
}

// newRecordCipher derives enc(s) and mac(s) from the traffic secret s.
func newRecordCipher(secret [SecretLen]byte) *recordCipher {
	enc := expand(secret[:], labelEnc)
	mk := expand(secret[:], labelMAC)
	block, err := aes.NewCipher(enc)
	if err != nil {
		panic("frame: aes.NewCipher with a 32-byte key: " + err.Error())
	}
	return &recordCipher{secret: secret, block: block, mac: hmac.New(sha256.New, mk)}
}

// next returns the cipher of next(s), used after a KEY_UPDATE.
func (c *recordCipher) next() *recordCipher {
	var s [SecretLen]byte
	copy(s[:], expand(c.secret[:], labelNext))
	return newRecordCipher(s)
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
	copy(next[:], expand(secret[:], labelNext))
	return next
}

// The record layer uses AES-256 in CFB mode with 128-bit feedback, as the
// protocol requires: it is what Go's deprecated cipher.NewCFBEncrypter
// computes. CFB is malleable on its own; it is safe here only because every
// record is authenticated (encrypt-then-MAC) and the tag is verified before a
// single byte is decrypted. It is written out rather than taken from
// crypto/cipher so that no record allocates a fresh Stream.

// cfbEncrypt encrypts src into dst, which may alias src exactly.
func (c *recordCipher) cfbEncrypt(iv []byte, dst, src []byte) {
	b, ks := c.block, c.ks[:]
	prev := iv[:aes.BlockSize]
	for len(src) >= aes.BlockSize {
		b.Encrypt(ks, prev)
		subtle.XORBytes(dst[:aes.BlockSize], src[:aes.BlockSize], ks)
		prev = dst[:aes.BlockSize]
		dst, src = dst[aes.BlockSize:], src[aes.BlockSize:]
	}
	if len(src) > 0 {
		b.Encrypt(ks, prev)
		subtle.XORBytes(dst, src, ks[:len(src)])
	}
}

// cfbDecrypt decrypts src into dst, which may alias src exactly.
func (c *recordCipher) cfbDecrypt(iv []byte, dst, src []byte) {
	b, ks, prev := c.block, c.ks[:], c.prev[:]
	copy(prev, iv)
	for len(src) >= aes.BlockSize {
		b.Encrypt(ks, prev)
		copy(prev, src[:aes.BlockSize])
		subtle.XORBytes(dst[:aes.BlockSize], src[:aes.BlockSize], ks)
		dst, src = dst[aes.BlockSize:], src[aes.BlockSize:]
	}
	if len(src) > 0 {
		b.Encrypt(ks, prev)
		subtle.XORBytes(dst, src, ks[:len(src)])
	}
}
