package frame

import (
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

// outHalf is the sending direction. Its lock serialises whole records: a
// record is sealed in buf and handed to the transport in one Write.
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

	iv   ivSource
	sent atomic.Uint64 // records sent, for Stats

	seqBuf [seqLen]byte
	// buf holds one record; the extra tagLen of capacity lets mac.Sum append
	// in place.
	buf [maxRecord + tagLen]byte
}

// plaintext returns the payload area of buf: the bytes after the type byte.
func (h *outHalf) payloadArea() []byte {
	return h.buf[headerLen+ivLen+1 : headerLen+ivLen+maxPlain]
}

// seal encrypts and authenticates the record whose payload of payloadLen
// bytes is already in payloadArea, then writes it. Callers hold mu.
func (h *outHalf) seal(typ byte, payloadLen int) error {
	if h.err != nil {
		return h.err
	}
	if h.seq == math.MaxUint64 {
		h.err = ErrSeqExhausted
		h.conn.Close()
		return h.err
	}
	n := 1 + payloadLen
	length := ivLen + n + tagLen
	rec := h.buf[:headerLen+length]
	binary.BigEndian.PutUint32(rec, uint32(length))
	iv := rec[headerLen : headerLen+ivLen]
	if err := h.iv.read(iv); err != nil {
		h.err = err
		return err
	}
	body := rec[headerLen+ivLen : headerLen+ivLen+n]
	body[0] = typ
	h.c.cfbEncrypt(iv, body, body)

	binary.BigEndian.PutUint64(h.seqBuf[:], h.seq)
	h.c.mac.Reset()
	h.c.mac.Write(h.seqBuf[:])
	h.c.mac.Write(rec[:headerLen+ivLen+n])
	h.c.mac.Sum(rec[:headerLen+ivLen+n]) // the tag lands at rec[headerLen+ivLen+n:]

	if _, err := h.conn.Write(rec); err != nil {
		h.err = err // a partial record has poisoned the stream
		return err
	}
	h.seq++
	h.sinceUpdate++
	h.sent.Add(1)
	return nil
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
	return nil
}

// write seals the concatenation of bufs as DATA records of at most
// MaxPayload bytes each: bufs are packed, so a short header and the body
// that follows it share one record.
func (h *outHalf) write(bufs [][]byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return 0, ErrWriteClosed
	}
	if err := h.sendFinished(); err != nil {
		return 0, err
	}
	total := 0
	for len(bufs) > 0 {
		if err := h.maybeUpdateKey(); err != nil {
			return total, err
		}
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
		if err := h.seal(typeData, fill); err != nil {
			return total, err
		}
		total += fill
	}
	return total, nil
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

// ivSource hands out fresh 16-byte IVs. With no reader configured it draws
// from crypto/rand in batches, so a record costs no system call; IVs are
// public once sent, so holding a batch in memory reveals nothing.
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

	raw   []byte
	r, w  int
	plain []byte
	recv  atomic.Uint64 // records received, for Stats
	ended atomic.Value  // errBox: the sticky error, readable without mu

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

// readRecord reads, verifies and decrypts the next record. Callers hold mu.
// Nothing of a record is decrypted before its tag has verified.
func (h *inHalf) readRecord() (typ byte, payload []byte, err error) {
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
	body := rec[headerLen+ivLen : headerLen+ivLen+n]
	h.c.cfbDecrypt(rec[headerLen:headerLen+ivLen], body, body)
	h.r += headerLen + length
	seq := h.seq
	h.seq++
	h.recv.Add(1)

	typ, payload = body[0], body[1:]
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
	default: // FINISHED after seq 0, or an unknown type
		return 0, nil, h.fail(ErrProtocol)
	}
	if h.seq == math.MaxUint64 {
		return 0, nil, h.fail(ErrSeqExhausted)
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
		typ, payload, err := h.readRecord()
		if err != nil {
			return 0, err
		}
		switch typ {
		case typeData:
			h.plain = payload
		case typeClose:
			h.end(io.EOF)
		case typeKeyUpdate:
			h.c = h.c.next()
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
	_, _, err := h.readRecord() // seq 0 is FINISHED or an error
	return err
}
