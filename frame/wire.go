// Package frame implements the record layer of tunnel protocol v1
// (PROTOCOL.md section 3): after a handshake, every byte in each direction is
// a sequence of AES-256-CFB records with a fresh random IV, authenticated
// encrypt-then-MAC with HMAC-SHA256 over an implicit sequence number.
//
// The package knows nothing of handshakes: a handshake derives the traffic
// secrets and the transcript hash, and hands them to New as Keys.
package frame

import "errors"

// Wire format of one record:
//
//	length u32 | iv [16] | ciphertext [n] | tag [32]
//	plaintext = type u8 | payload
//	tag = HMAC-SHA256(mac, seq u64 | length u32 | iv | ciphertext)
const (
	headerLen = 4
	ivLen     = 16
	tagLen    = 32
	seqLen    = 8

	// MaxPayload is the largest payload one record carries (n = 1 + payload).
	MaxPayload = 65535
	maxPlain   = 1 + MaxPayload

	// MinLength and MaxLength bound the length field: 16 + n + 32 with 1 <= n <= 65536.
	MinLength = ivLen + 1 + tagLen
	MaxLength = ivLen + maxPlain + tagLen

	// Overhead is the number of bytes a record adds to its payload.
	Overhead = headerLen + ivLen + 1 + tagLen

	maxRecord = headerLen + MaxLength
)

// Record types.
const (
	typeData      byte = 0x00
	typeFinished  byte = 0x01
	typeClose     byte = 0x02
	typeKeyUpdate byte = 0x03
	// typeAck exists only on connections whose handshake negotiated session
	// resumption (Config.Acks; PROTOCOL-v2.md section 6.2): elsewhere it is
	// an unknown type, as version 1 requires.
	typeAck byte = 0x04
)

// ACK payload (PROTOCOL-v2.md section 6.2): received u64 | flags u8.
const (
	ackLen       = 9
	ackFlagReply = 0x01 // the sender asks for an ACK at once (keepalive probe)
)

// SecretLen is the size of a traffic secret and of the transcript hash.
const SecretLen = 32

// HKDF labels of the key schedule (PROTOCOL.md section 2.4).
const (
	labelEnc  = "tunnel/1 enc"
	labelMAC  = "tunnel/1 mac"
	labelNext = "tunnel/1 next"
)

// Errors returned by Conn. A read or write that fails with one of them has
// closed the connection; the same error is returned from then on.
var (
	// ErrAuth: a record's tag did not verify (tampered, replayed, reordered,
	// reflected or dropped records all end here).
	ErrAuth = errors.New("frame: record authentication failed")
	// ErrLength: the 4-byte length field is outside [MinLength, MaxLength].
	ErrLength = errors.New("frame: record length out of range")
	// ErrTruncated: the transport ended without an authenticated CLOSE record,
	// so the peer's data may be cut short.
	ErrTruncated = errors.New("frame: connection ended without CLOSE (truncated)")
	// ErrFinished: the peer's first record was not a FINISHED carrying the
	// transcript hash.
	ErrFinished = errors.New("frame: peer's FINISHED missing or wrong")
	// ErrProtocol: an authenticated record that the protocol forbids
	// (unknown type, FINISHED after the first record, a non-empty CLOSE, an
	// ACK without Config.Acks or whose payload is not 9 bytes with only
	// known flags).
	ErrProtocol = errors.New("frame: protocol violation")
	// ErrSeqExhausted: the sequence number would wrap; the connection is closed.
	ErrSeqExhausted = errors.New("frame: sequence number exhausted")
	// ErrWriteClosed: Write after CloseWrite or Close.
	ErrWriteClosed = errors.New("frame: write after CLOSE")
	// ErrNoAcks: WriteAck on a connection without ACK records
	// (Config.Acks false). Nothing is sent and the connection stays open.
	ErrNoAcks = errors.New("frame: ACK records are not enabled on this connection")
)
