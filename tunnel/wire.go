// Package tunnel runs the entry and exit agents: one stream of a session
// (package session) per application connection, relayed both ways
// (package relay) (PROTOCOL.md section 4).
//
//	app --TCP--> Entry --stream header + bytes--> [session / frame / TCP] --> Exit --TCP--> backend
//	                   <--status + bytes---------                         <--
//
// The entry: entry.go (the agent, its listeners and drain; its keeper,
// package keeper, keeps its session with an exit); outgoing.go (an
// application connection's stream). The exit: exit.go (the agent,
// accept loop and drain); the acceptor, which lets an entry in: acceptor.go
// (pending gate, per-source limit, handshake, session), resumable.go (the
// sessions a resumption may continue); exitsession.go (one
// session's streams, its limits and refusals); the forwarder, which serves
// a stream: incoming.go (header, access, backend dial, relay), services.go
// (the services and access rules), apiexit.go (a service the program
// serves itself). The Go API: apientry.go, apiexit.go, apiconn.go. Both:
// stats.go (the ledger's Stats, a stream's end as the ledger labels it),
// health.go, reload.go. This file: the stream header and status on the
// wire.
//
// The packages under it: session (yamux over the record layer, and all of
// yamux's wire), keeper (the entry's session with an exit: reaching one,
// failover and backoff, upkeep with GoAway and recycling, resumption),
// ledger (each agent's one accounting sink: the counts /status and
// /metrics both read, the live-session registry, the Prometheus
// collector), relay (one connection through one stream, both ways),
// rawio (raw system calls on non-blocking sockets), listen (listening
// sockets, accept retries, bounds on descriptors and pending connections),
// status (the status endpoint: counters, probes, metrics), exits (resolving
// and reaching the entry's exits), sourcelimit (the exit's per-source
// handshake limit), proxyheader (the PROXY protocol header to a backend),
// backendprobe (whether a backend accepts connections, for readiness) and
// logfield (log field conventions).
package tunnel

import (
	"errors"
	"fmt"
	"io"

	"github.com/tunnel-dev/tunnel/handshake/wiretext"
)

// Stream header and status (PROTOCOL.md section 4).
const streamVersion = 1

// Status is the exit's answer to a stream header.
type Status byte

const (
	StatusOK             Status = 0
	StatusUnknownService Status = 1
	StatusUnreachable    Status = 2
	StatusRefused        Status = 3
	StatusBusy           Status = 4
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusUnknownService:
		return "unknown service"
	case StatusUnreachable:
		return "backend unreachable"
	case StatusRefused:
		return "refused by policy"
	case StatusBusy:
		return "busy"
	}
	return fmt.Sprintf("status(%d)", byte(s))
}

var errStreamHeader = errors.New("tunnel: bad stream header")

// streamHeader opens every stream.
type streamHeader struct {
	service string // empty: the exit's default backend
	origin  string // the application's address as the entry saw it
}

// marshal encodes h; fields longer than 255 bytes are cut.
func (h streamHeader) marshal() []byte {
	service, origin := clip(h.service), clip(h.origin)
	b := make([]byte, 0, 3+len(service)+len(origin))
	b = append(b, streamVersion, byte(len(service)))
	b = append(b, service...)
	b = append(b, byte(len(origin)))
	return append(b, origin...)
}

// clip cuts s to a text field's 255 bytes, without splitting a character.
func clip(s string) string { return wiretext.Cut(s, 255) }

// readStreamHeader reads exactly one header from r.
func readStreamHeader(r io.Reader) (streamHeader, error) {
	var h streamHeader
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return h, err
	}
	if b[0] != streamVersion {
		return h, fmt.Errorf("%w: version %d; this exit speaks version %d", errStreamHeader, b[0], streamVersion)
	}
	service, err := readString(r, int(b[1]))
	if err != nil {
		return h, err
	}
	if _, err := io.ReadFull(r, b[:1]); err != nil {
		return h, err
	}
	origin, err := readString(r, int(b[0]))
	if err != nil {
		return h, err
	}
	for _, c := range []byte(service) {
		if c < 0x21 || c > 0x7e {
			return h, fmt.Errorf("%w: service name is not printable ASCII", errStreamHeader)
		}
	}
	return streamHeader{service: service, origin: origin}, nil
}

func readString(r io.Reader, n int) (string, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}

// marshalStatus encodes status | msg_len | msg.
func marshalStatus(s Status, msg string) []byte {
	msg = clip(msg)
	return append([]byte{byte(s), byte(len(msg))}, msg...)
}

// readStatus reads the exit's answer. The message is the peer's text, made
// safe to log.
func readStatus(r io.Reader) (Status, string, error) {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, "", err
	}
	msg := make([]byte, b[1])
	if _, err := io.ReadFull(r, msg); err != nil {
		return Status(b[0]), "", err
	}
	return Status(b[0]), wiretext.Printable(msg), nil
}
