package proxyheader

import (
	"bufio"
	"bytes"
	"net"
	"testing"

	"github.com/pires/go-proxyproto"
)

// TestProxyHeaderLocal: without an origin the header says LOCAL, with no
// addresses, and still names the key.
func TestProxyHeaderLocal(t *testing.T) {
	b, err := Encode("", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5432}, "SHA256:x")
	if err != nil {
		t.Fatal(err)
	}
	h, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		t.Fatal(err)
	}
	tlvs, _ := h.TLVs()
	if !h.Command.IsLocal() || len(tlvs) != 1 || string(tlvs[0].Value) != "SHA256:x" {
		t.Errorf("header %+v, TLVs %+v: want LOCAL with the fingerprint", h, tlvs)
	}
	// An IPv6 application and an IPv4 backend still make a PROXY header.
	b, err = Encode("[2001:db8::1]:40000", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5432}, "SHA256:x")
	if err != nil {
		t.Fatal(err)
	}
	if h, err = proxyproto.Read(bufio.NewReader(bytes.NewReader(b))); err != nil || h.SourceAddr.String() != "[2001:db8::1]:40000" {
		t.Errorf("IPv6 origin: %+v, %v", h, err)
	}
}
