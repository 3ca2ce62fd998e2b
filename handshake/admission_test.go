package handshake

import (
	"net"
	"testing"
	"time"
)

// TestProvenSources: a completed handshake vouches for its source (an IPv4
// address, an IPv6 /64) and key for provenFor, and no longer; the table
// stays bounded, forgetting the oldest pair first.
func TestProvenSources(t *testing.T) {
	var p provenSources
	now := time.Now()
	k1, k2 := [KeyIDLen]byte{1}, [KeyIDLen]byte{2}
	a := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 4000}
	p.add(a, k1, now)
	for _, c := range []struct {
		addr net.Addr
		key  [KeyIDLen]byte
		at   time.Time
		want bool
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 5000}, k1, now, true}, // any port
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.8"), Port: 4000}, k1, now, false},
		{a, k2, now, false},
		{a, k1, now.Add(provenFor), false},
		{&net.UnixAddr{Name: "/run/x", Net: "unix"}, k1, now, false},
	} {
		if got := p.has(c.addr, c.key, c.at); got != c.want {
			t.Errorf("has(%v, key %d, +%v) = %v, want %v", c.addr, c.key[0], c.at.Sub(now), got, c.want)
		}
	}
	v6 := &net.TCPAddr{IP: net.ParseIP("2001:db8:1:2::5")}
	p.add(v6, k1, now)
	if !p.has(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff::9")}, k1, now) {
		t.Error("an address of the same IPv6 /64 is not vouched for")
	}
	for i := range provenMax + 10 {
		ip := net.IPv4(10, byte(i>>16), byte(i>>8), byte(i))
		p.add(&net.TCPAddr{IP: ip}, k1, now.Add(time.Duration(i+1)*time.Millisecond))
	}
	if n := len(p.until); n > provenMax {
		t.Errorf("%d pairs kept, more than %d", n, provenMax)
	}
	if p.has(a, k1, now) {
		t.Error("the oldest pair is still kept after the table filled")
	}
}
