package frame

import (
	"net"
	"sync"
	"time"
)

// Keys is what a handshake hands to the record layer: the traffic secret of
// each direction, as seen from this side, and the transcript hash that both
// FINISHED records carry.
type Keys struct {
	Send       [SecretLen]byte
	Recv       [SecretLen]byte
	Transcript [SecretLen]byte
}

// Config tunes a Conn. The zero value is ready to use.
type Config struct {
	// KeyUpdateRecords is how many records are sealed under one key before
	// the sender sends KEY_UPDATE. Zero means DefaultKeyUpdateRecords.
	KeyUpdateRecords uint64
	// KeyUpdateInterval is how long one sending key lives. Zero means
	// DefaultKeyUpdateInterval.
	KeyUpdateInterval time.Duration
	// Acks enables ACK records (type 0x04, PROTOCOL-v2.md section 6.2):
	// only on a connection whose handshake negotiated session resumption,
	// which package handshake decides (it sets this field itself). Without
	// it an ACK is an unknown record type, a protocol error, as version 1
	// says.
	Acks bool
	// OnAck, with Acks, is called for each ACK received, from the reading
	// goroutine, inside Read, with the read lock held: it must not call
	// Read, and should be quick (WriteAck is allowed: the directions do not
	// share a lock). received is the peer's count of DATA payload bytes it
	// has received in the session; reply is set when the peer asks for an
	// ACK at once. Whether received makes sense (never decreasing, never
	// beyond what was sent) is the caller's to check. Nil: ACKs are
	// verified and dropped. SetOnAck replaces it on one Conn.
	OnAck func(received uint64, reply bool)
}

// Defaults of Config, from PROTOCOL.md section 3.
const (
	DefaultKeyUpdateRecords  = 1 << 30
	DefaultKeyUpdateInterval = time.Hour
)

// Tunables.
const (
	// closeTimeout bounds how long Close waits to send CLOSE to a stalled peer.
	closeTimeout = 2 * time.Second
	// maxBatch is how many records one Write seals together, interleaving
	// their CFB chains, and hands to the transport at once.
	maxBatch = 4
	// decryptBatch is how many keystream blocks decryption computes before
	// it XORs them in.
	decryptBatch = 8
)

// BatchPayload is the payload of the largest batch of records that one
// Write seals together and hands to the transport at once. A writer that
// has much to send does best with Writes of this size.
const BatchPayload = maxBatch * MaxPayload

func (c Config) withDefaults() Config {
	if c.KeyUpdateRecords == 0 {
		c.KeyUpdateRecords = DefaultKeyUpdateRecords
	}
	if c.KeyUpdateInterval <= 0 {
		c.KeyUpdateInterval = DefaultKeyUpdateInterval
	}
	return c
}

// Conn is an established record-layer connection. It implements net.Conn:
// Write seals DATA records, Read verifies and decrypts them. One goroutine
// may Read while another Writes; the two directions never share a lock.
//
// The first record each side sends is FINISHED; Write sends it implicitly,
// SendFinished sends it explicitly. A record that fails to verify closes the
// connection, and Read returns one of the package's errors from then on;
// nothing of a failed record is ever returned.
type Conn struct {
	conn net.Conn
	in   inHalf
	out  outHalf

	closeOnce sync.Once
	closeErr  error
}

var _ net.Conn = (*Conn)(nil)

// New wraps conn, over which a handshake has produced keys. It does no I/O.
// The Conn owns conn from now on. cfg may be nil.
func New(conn net.Conn, keys Keys, cfg *Config) *Conn {
	var cf Config
	if cfg != nil {
		cf = *cfg
	}
	cf = cf.withDefaults()
	c := &Conn{conn: conn}
	c.out.conn = conn
	c.out.th = keys.Transcript
	c.out.cfg = cf
	c.out.c = newRecordCipher(keys.Send)
	c.in.conn = conn
	c.in.th = keys.Transcript
	c.in.c = newRecordCipher(keys.Recv)
	c.in.raw = make([]byte, 2*maxRecord)
	c.in.acks, c.in.onAck = cf.Acks, cf.OnAck
	return c
}

// SetOnAck replaces Config.OnAck for this connection: for a caller that
// learns which session the connection belongs to only after the handshake.
// Set before the first Read, it sees every ACK. Safe to call while another
// goroutine reads: it waits for the Read in progress.
func (c *Conn) SetOnAck(f func(received uint64, reply bool)) {
	c.in.mu.Lock()
	c.in.onAck = f
	c.in.mu.Unlock()
}

// WriteAck sends one ACK record: received is this side's count of DATA
// payload bytes received from the peer in the session, reply asks the peer
// to answer with an ACK at once (a keepalive probe). It sends FINISHED
// first if that is still owed. It is safe to call while another goroutine
// Writes or Reads; it waits for a Write in progress, as Writes wait for
// each other. Without Config.Acks it returns ErrNoAcks and sends nothing.
func (c *Conn) WriteAck(received uint64, reply bool) error {
	c.out.mu.Lock()
	defer c.out.mu.Unlock()
	return c.out.sendAck(received, reply)
}

// SendFinished sends this side's FINISHED record unless it was sent already.
func (c *Conn) SendFinished() error {
	c.out.mu.Lock()
	defer c.out.mu.Unlock()
	return c.out.sendFinished()
}

// ReadFinished reads the peer's first record and checks that it is FINISHED
// with the transcript hash. Read does the same implicitly; a responder calls
// it to confirm the keys before it acts for the peer.
func (c *Conn) ReadFinished() error {
	return c.in.readFinished()
}

// Read reads decrypted DATA payload. It returns io.EOF after the peer's
// CLOSE record, ErrTruncated if the transport ended without one.
func (c *Conn) Read(p []byte) (int, error) {
	return c.in.read(p)
}

// Write seals p as one or more DATA records.
func (c *Conn) Write(p []byte) (int, error) {
	return c.out.write([][]byte{p})
}

// WriteBuffers seals the concatenation of bufs, packing it into as few
// records as fit: a multiplexer's frame header and its body, passed
// together, become one record. It does not retain bufs.
func (c *Conn) WriteBuffers(bufs ...[]byte) (int, error) {
	return c.out.write(bufs)
}

// CloseWrite sends CLOSE, an authenticated end of this direction, and then
// half-closes the transport if it supports that. Reading goes on.
func (c *Conn) CloseWrite() error {
	c.out.mu.Lock()
	err := c.out.sendClose()
	c.out.mu.Unlock()
	if err != nil {
		return err
	}
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close sends CLOSE, unless a write is in progress or the direction is
// already closed, and closes the transport. It is safe to call more than
// once and from any goroutine.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		if c.out.mu.TryLock() {
			if c.out.err == nil && !c.out.closed {
				c.conn.SetWriteDeadline(time.Now().Add(closeTimeout))
				c.out.sendClose()
			}
			c.out.closed = true
			c.out.mu.Unlock()
		}
		c.closeErr = c.conn.Close()
	})
	return c.closeErr
}

// ReadError returns what ended the read direction: io.EOF after the peer's
// CLOSE, ErrTruncated, ErrAuth or another failure; nil while it is open.
// It never blocks.
func (c *Conn) ReadError() error {
	if b, ok := c.in.ended.Load().(errBox); ok {
		return b.err
	}
	return nil
}

// Stats counts records, FINISHED, CLOSE and KEY_UPDATE included, and of
// them the KEY_UPDATE records, each direction.
type Stats struct {
	RecordsSent        uint64
	RecordsReceived    uint64
	KeyUpdatesSent     uint64
	KeyUpdatesReceived uint64
}

// Stats returns the record counters. It never blocks.
func (c *Conn) Stats() Stats {
	return Stats{
		RecordsSent:        c.out.sent.Load(),
		RecordsReceived:    c.in.recv.Load(),
		KeyUpdatesSent:     c.out.updates.Load(),
		KeyUpdatesReceived: c.in.updates.Load(),
	}
}

// NetConn returns the underlying transport. Writing to it or reading from
// it corrupts the record stream.
func (c *Conn) NetConn() net.Conn { return c.conn }

func (c *Conn) LocalAddr() net.Addr                { return c.conn.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.conn.RemoteAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.conn.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.conn.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }
