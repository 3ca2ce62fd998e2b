package frame

import (
	"crypto/aes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// outHalf is the sending direction. Its lock serialises whole records: up
// to maxBatch records are laid out back to back in buf, sealed together and
// handed to the transport in one Write.
type outHalf struct {
	mu   sync.Mutex
	conn net.Conn
	th   [SecretLen]byte
	cfg  Config

	c            *recordCipher
	seq          uint64 // seq of the next record
	sinceUpdate  uint64 // records under the current key
	keyStart     time.Time
	finishedSent bool
	closed       bool  // CLOSE sent (or Close called): no more records
	err          error // sticky: the first transport failure

	iv      ivSource
	sent    atomic.Uint64 // records sent, for Stats
	updates atomic.Uint64 // KEY_UPDATE records sent, for Stats

	seqBuf [seqLen]byte
	// batch is the records laid out in buf and not yet sent: their regions
	// (iv | body, see cfbEncrypt) and the end of the last one in buf.
	regions [maxBatch][]byte
	n       int
	end     int
	// buf holds up to maxBatch whole records; the extra tagLen of capacity
	// lets mac.Sum append the last tag in place.
	buf [maxBatch*maxRecord + tagLen]byte
}

// payloadArea returns where the payload of the next record of the batch
// goes: after its header, iv and type byte.
func (h *outHalf) payloadArea() []byte {
	off := h.end + headerLen + ivLen + 1
	return h.buf[off : off+MaxPayload]
}

// add lays out the next record of the batch, whose payload of payloadLen
// bytes is already in payloadArea. Callers hold mu.
func (h *outHalf) add(typ byte, payloadLen int) error {
	if h.err != nil {
		return h.err
	}
	rec := h.buf[h.end:]
	length := ivLen + 1 + payloadLen + tagLen
	binary.BigEndian.PutUint32(rec, uint32(length))
	if err := h.iv.read(rec[headerLen : headerLen+ivLen]); err != nil {
		h.err = err
		return err
	}
	rec[headerLen+ivLen] = typ
	h.regions[h.n] = rec[headerLen : headerLen+ivLen+1+payloadLen]
	h.n++
	h.end += headerLen + length
	return nil
}

// flush seals the batch and writes it. Callers hold mu. A sequence number
// is never used twice and never wraps: a batch that would need seq
// 2^64-1 fails (the last record ever sent has seq 2^64-2).
func (h *outHalf) flush() error {
	n, end := h.n, h.end
	h.n, h.end = 0, 0
	if h.err != nil {
		return h.err
	}
	if h.seq > math.MaxUint64-uint64(n) {
		h.err = ErrSeqExhausted
		h.conn.Close()
		return h.err
	}
	h.c.cfbEncrypt(h.regions[:n])
	off := 0
	for i, r := range h.regions[:n] {
		authed := h.buf[off : off+headerLen+len(r)]
		binary.BigEndian.PutUint64(h.seqBuf[:], h.seq+uint64(i))
		h.c.mac.Reset()
		h.c.mac.Write(h.seqBuf[:])
		h.c.mac.Write(authed)
		h.c.mac.Sum(authed[: len(authed) : len(authed)+tagLen]) // the tag lands right after the ciphertext
		off += len(authed) + tagLen
		h.regions[i] = nil
	}
	if _, err := h.conn.Write(h.buf[:end]); err != nil {
		h.err = err // a partial record has poisoned the stream
		return err
	}
	h.seq += uint64(n)
	h.sinceUpdate += uint64(n)
	h.sent.Add(uint64(n))
	return nil
}

// seal sends one record whose payload of payloadLen bytes is already in
// payloadArea of an empty batch. Callers hold mu.
func (h *outHalf) seal(typ byte, payloadLen int) error {
	if err := h.add(typ, payloadLen); err != nil {
		return err
	}
	return h.flush()
}

// sendFinished sends FINISHED if it has not been sent. Callers hold mu.
func (h *outHalf) sendFinished() error {
	if h.finishedSent {
		return nil
	}
	copy(h.payloadArea(), h.th[:])
	if err := h.seal(typeFinished, SecretLen); err != nil {
		return err
	}
	h.finishedSent = true
	h.keyStart = time.Now()
	return nil
}

// maybeUpdateKey sends KEY_UPDATE and moves to next(s) when the current key
// has sealed enough records or lived long enough. Callers hold mu.
func (h *outHalf) maybeUpdateKey() error {
	if h.sinceUpdate < h.cfg.KeyUpdateRecords && time.Since(h.keyStart) < h.cfg.KeyUpdateInterval {
		return nil
	}
	if err := h.seal(typeKeyUpdate, 0); err != nil {
		return err
	}
	h.c = h.c.next()
	h.sinceUpdate = 0
	h.keyStart = time.Now()
	h.updates.Add(1)
	return nil
}

// write seals the concatenation of bufs as DATA records of at most
// MaxPayload bytes each: bufs are packed, so a short header and the body
// that follows it share one record, and a large write becomes batches of
// maxBatch full records, each batch sealed together and sent in one Write.
func (h *outHalf) write(bufs [][]byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0, ErrWriteClosed
	}
	if err := h.sendFinished(); err != nil {
		return 0, err
	}
	total, batched := 0, 0 // batched: bytes of total in the batch not yet sent
	for len(bufs) > 0 {
		if err := h.maybeUpdateKey(); err != nil {
			return total, err
		}
		// A batch never crosses a key update.
		limit := min(maxBatch, h.cfg.KeyUpdateRecords-h.sinceUpdate)
		for uint64(h.n) < limit && len(bufs) > 0 {
			area := h.payloadArea()
			fill := 0
			for len(bufs) > 0 && fill < len(area) {
				k := copy(area[fill:], bufs[0])
				fill += k
				if k == len(bufs[0]) {
					bufs = bufs[1:]
				} else {
					bufs[0] = bufs[0][k:]
				}
			}
			if fill == 0 {
				break
			}
			if err := h.add(typeData, fill); err != nil {
				h.n, h.end = 0, 0
				return total, err
			}
			batched += fill
		}
		if h.n == 0 {
			break
		}
		if err := h.flush(); err != nil {
			return total, err
		}
		total += batched
		batched = 0
	}
	return total, nil
}

// sendAck sends an ACK (after FINISHED, if that is still owed, and a
// KEY_UPDATE if one is due). Callers hold mu.
func (h *outHalf) sendAck(received uint64, reply bool) error {
	switch {
	case !h.cfg.Acks:
		return ErrNoAcks
	case h.closed:
		return ErrWriteClosed
	}
	if err := h.sendFinished(); err != nil {
		return err
	}
	if err := h.maybeUpdateKey(); err != nil {
		return err
	}
	p := h.payloadArea()
	binary.BigEndian.PutUint64(p, received)
	p[8] = 0
	if reply {
		p[8] = ackFlagReply
	}
	return h.seal(typeAck, ackLen)
}

// sendClose sends CLOSE (after FINISHED, if that is still owed) and marks
// the direction closed. Callers hold mu.
func (h *outHalf) sendClose() error {
	if h.closed {
		return nil
	}
	h.closed = true
	if err := h.sendFinished(); err != nil {
		return err
	}
	return h.seal(typeClose, 0)
}

// ivSource hands out fresh 16-byte IVs from crypto/rand, drawn in batches
// so that a record costs no system call; IVs are public once sent, so
// holding a batch in memory reveals nothing. Only the package's tests set r,
// to reproduce the test vectors; there is no way to set it from outside.
type ivSource struct {
	r   io.Reader // nil: crypto/rand
	buf [4096]byte
	off int
}

func (s *ivSource) read(iv []byte) error {
	if s.r != nil {
		_, err := io.ReadFull(s.r, iv)
		return err
	}
	if s.off == 0 || s.off+len(iv) > len(s.buf) {
		rand.Read(s.buf[:]) // never fails (crypto/rand.Read crashes the program instead)
		s.off = 0
	}
	s.off += copy(iv, s.buf[s.off:])
	return nil
}

// inHalf is the receiving direction. raw[r:w] holds bytes read from the
// transport and not yet parsed; plain is the unread payload of the last
// DATA record, decrypted in place inside raw.
type inHalf struct {
	mu   sync.Mutex
	conn net.Conn
	th   [SecretLen]byte

	c        *recordCipher
	seq      uint64 // seq expected of the next record
	finished bool   // the peer's FINISHED has been verified
	err      error  // sticky: io.EOF after CLOSE, or the failure that closed the connection
	acks     bool   // Config.Acks: ACK records are allowed
	onAck    func(received uint64, reply bool)

	raw     []byte
	r, w    int
	plain   []byte
	recv    atomic.Uint64 // records received, for Stats
	updates atomic.Uint64 // KEY_UPDATE records received, for Stats
	ended   atomic.Value  // errBox: the sticky error, readable without mu

	seqBuf [seqLen]byte
	tag    [tagLen]byte
}

// errBox lets atomic.Value hold errors of different types.
type errBox struct{ err error }

// end records the sticky error of the direction.
func (h *inHalf) end(err error) {
	h.err = err
	h.ended.CompareAndSwap(nil, errBox{err})
}

// fail records err, closes the transport and returns err.
func (h *inHalf) fail(err error) error {
	h.end(err)
	h.plain = nil
	h.conn.Close()
	return err
}

// fill makes raw[r:w] hold at least k bytes. A timeout leaves the state
// intact so that a later call resumes; other failures are returned as is.
func (h *inHalf) fill(k int) error {
	for h.w-h.r < k {
		if len(h.raw)-h.r < k {
			h.w = copy(h.raw, h.raw[h.r:h.w])
			h.r = 0
		}
		n, err := h.conn.Read(h.raw[h.w:])
		h.w += n
		if err != nil && h.w-h.r < k {
			return err
		}
	}
	return nil
}

// readRecord reads, verifies and decrypts the next record, and acts on its
// type: FINISHED is checked, KEY_UPDATE switches the receiving key, an ACK
// is checked and handed to onAck. Callers
// hold mu. Nothing of a record is decrypted before its tag has verified.
// When dst has room for the payload, the payload is decrypted into it and
// is a prefix of dst; otherwise it is decrypted in place, in the read
// buffer, and valid until the next read. The sequence space is the
// sender's: the last record accepted has seq 2^64-2, and one that would
// need seq 2^64-1 is refused unread.
func (h *inHalf) readRecord(dst []byte) (typ byte, payload []byte, err error) {
	if h.seq == math.MaxUint64 {
		return 0, nil, h.fail(ErrSeqExhausted)
	}
	if err := h.fill(headerLen); err != nil {
		return 0, nil, h.transportError(err)
	}
	length := int(binary.BigEndian.Uint32(h.raw[h.r:]))
	if length < MinLength || length > MaxLength {
		return 0, nil, h.fail(ErrLength)
	}
	if err := h.fill(headerLen + length); err != nil {
		return 0, nil, h.transportError(err)
	}
	rec := h.raw[h.r : h.r+headerLen+length]
	n := length - ivLen - tagLen
	authed := rec[:headerLen+ivLen+n]

	binary.BigEndian.PutUint64(h.seqBuf[:], h.seq)
	h.c.mac.Reset()
	h.c.mac.Write(h.seqBuf[:])
	h.c.mac.Write(authed)
	if !hmac.Equal(h.c.mac.Sum(h.tag[:0]), rec[headerLen+ivLen+n:]) {
		return 0, nil, h.fail(ErrAuth)
	}
	region := rec[headerLen : headerLen+ivLen+n]
	if n > aes.BlockSize && len(dst) >= n-1 {
		// Straight into the reader's buffer, saving a copy.
		payload = dst[:n-1]
		typ = h.c.cfbDecryptSplit(payload, region)
	} else {
		h.c.cfbDecrypt(region)
		typ, payload = region[ivLen], region[ivLen+1:]
	}
	h.r += headerLen + length
	seq := h.seq
	h.seq++
	h.recv.Add(1)

	switch {
	case seq == 0:
		if typ != typeFinished || subtle.ConstantTimeCompare(payload, h.th[:]) != 1 {
			return 0, nil, h.fail(ErrFinished)
		}
		h.finished = true
	case typ == typeData:
	case typ == typeClose || typ == typeKeyUpdate:
		if len(payload) != 0 {
			return 0, nil, h.fail(ErrProtocol)
		}
		if typ == typeKeyUpdate {
			h.c = h.c.next()
			h.updates.Add(1)
		}
	case typ == typeAck && h.acks:
		if len(payload) != ackLen || payload[8]&^ackFlagReply != 0 {
			return 0, nil, h.fail(ErrProtocol)
		}
		if h.onAck != nil {
			h.onAck(binary.BigEndian.Uint64(payload), payload[8]&ackFlagReply != 0)
		}
	default: // FINISHED after seq 0, or an unknown type
		return 0, nil, h.fail(ErrProtocol)
	}
	return typ, payload, nil
}

// transportError classifies a failed read of the transport: a timeout is
// returned and leaves the connection usable, EOF is truncation (no CLOSE
// came before it), anything else is sticky.
func (h *inHalf) transportError(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return err
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return h.fail(ErrTruncated)
	}
	return h.fail(err)
}

// read serves DATA payload into p, reading records as needed.
func (h *inHalf) read(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.plain) == 0 {
		if h.err != nil {
			return 0, h.err
		}
		if len(p) == 0 {
			return 0, nil
		}
		typ, payload, err := h.readRecord(p)
		if err != nil {
			return 0, err
		}
		switch {
		case typ == typeData && len(payload) > 0 && &payload[0] == &p[0]:
			return len(payload), nil
		case typ == typeData:
			h.plain = payload
		case typ == typeClose:
			h.end(io.EOF)
		}
	}
	n := copy(p, h.plain)
	h.plain = h.plain[n:]
	return n, nil
}

// readFinished reads records until the peer's FINISHED has been verified.
func (h *inHalf) readFinished() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.finished {
		return nil
	}
	if h.err != nil {
		return h.err
	}
	_, _, err := h.readRecord(nil) // seq 0 is FINISHED or an error
	return err
}
