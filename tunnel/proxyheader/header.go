// Package proxyheader writes the PROXY protocol v2 header with which the
// exit opens a backend connection (per service, --proxy-protocol).
// A backend that speaks it (nginx, HAProxy, PostgreSQL poolers, ...) learns
// the application's address as the entry saw it, instead of the exit's, and
// which entry key the stream came through.
//
// The header is encoded by github.com/pires/go-proxyproto, a maintained
// implementation of the specification, rather than by hand. It carries:
//
//   - command PROXY, TCP over IPv4 or IPv6: the source is the origin of the
//     stream header (the application's address as the entry saw it; the exit
//     cannot check it, and trusts it as it trusts the entry's key), the
//     destination the backend's address as the exit dialed it, or, for a
//     backend on a UNIX socket, the unspecified address of the source's
//     family with port 0. Without an origin (an application that came over
//     the entry's UNIX socket has none), command LOCAL, family UNSPEC and
//     no addresses;
//   - a TLV of type TLVFingerprint (0xE0, the first of the range the
//     specification leaves to applications) whose value is the entry key's
//     fingerprint in ASCII, "SHA256:...".
package proxyheader

import (
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
)

// TLVFingerprint is the TLV type of the entry key's fingerprint.
const TLVFingerprint = proxyproto.PP2_TYPE_MIN_CUSTOM

// Encode returns the PROXY protocol v2 header for a stream from origin
// ("ip:port", or empty), through the entry key with fingerprint fp, to the
// backend at backend.
func Encode(origin string, backend net.Addr, fp string) ([]byte, error) {
	h := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	if ap, err := netip.ParseAddrPort(origin); err == nil {
		dst, ok := backend.(*net.TCPAddr)
		if !ok { // a UNIX socket: no address of the source's kind
			dst = &net.TCPAddr{IP: net.IPv4zero}
			if ap.Addr().Is6() && !ap.Addr().Is4In6() {
				dst.IP = net.IPv6unspecified
			}
		}
		h = proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(ap), dst)
	}
	if err := h.SetTLVs([]proxyproto.TLV{{Type: TLVFingerprint, Value: []byte(fp)}}); err != nil {
		return nil, err
	}
	return h.Format()
}

// Write sends backend the header of a stream from origin through the entry
// key fp (Encode), within timeout.
func Write(backend net.Conn, origin, fp string, timeout time.Duration) error {
	b, err := Encode(origin, backend.RemoteAddr(), fp)
	if err != nil {
		return err
	}
	backend.SetWriteDeadline(time.Now().Add(timeout))
	_, err = backend.Write(b)
	backend.SetWriteDeadline(time.Time{})
	return err
}
