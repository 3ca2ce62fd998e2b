package handshake

import (
	"errors"
	"io"
	"net"
	"testing"
)

func initiatorCfg(version int, fallback bool) *Config {
	ik, rk, _ := keys()
	return &Config{PrivateKey: ik, PeerKey: &rk.PublicKey, Version: version, Fallback: fallback}
}

// TestVersions: every pair of what an initiator speaks and what a responder
// accepts that should agree does, on the version the initiator spoke, over
// pipes and TCP; data flows both ways.
func TestVersions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version int
		want    int
	}{{"default is 1", 0, 1}, {"1", Version1, 1}, {"2", Version2, 2}} {
		for name, transport := range map[string]func(*testing.T) (net.Conn, net.Conn){
			"tcp":  tcpPair,
			"pipe": func(*testing.T) (net.Conn, net.Conn) { return net.Pipe() },
		} {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				ik, rk, _ := keys()
				a, b := transport(t)
				ini, res := runBoth(t, a, b, initiatorCfg(tc.version, false), newResponder(t, rk, &ik.PublicKey))
				if ini.err != nil || res.err != nil {
					t.Fatalf("initiator: %v; responder: %v", ini.err, res.err)
				}
				if ini.res.Version != tc.want || res.res.Version != tc.want {
					t.Fatalf("versions spoken: initiator %d, responder %d; want %d", ini.res.Version, res.res.Version, tc.want)
				}
				go func() {
					ini.res.Conn.Write([]byte("ping"))
					ini.res.Conn.CloseWrite()
				}()
				if got, err := io.ReadAll(res.res.Conn); err != nil || string(got) != "ping" {
					t.Fatalf("responder read %q, %v", got, err)
				}
			})
		}
	}
}

// TestFallbackToV1OnlyResponder: a version 2 initiator meets a responder of
// version 1 alone; it is refused with an error the caller recognises, and
// the caller's redial with Version1 and Fallback succeeds (a responder of
// version 1 ignores the suite it does not know).
func TestFallbackToV1OnlyResponder(t *testing.T) {
	ik, rk, _ := keys()
	r := newResponder(t, rk, &ik.PublicKey)
	r.v1Only = true
	a, b := tcpPair(t)
	ini, res := runBoth(t, a, b, initiatorCfg(Version2, false), r)
	var ae *AlertError
	if !errors.Is(ini.err, ErrUnsupportedVersion) || !errors.As(ini.err, &ae) || ae.Code != AlertUnsupportedVersion {
		t.Fatalf("version 2 to a version 1 responder: initiator err = %v, want ALERT unsupported_version", ini.err)
	}
	if !errors.Is(res.err, ErrUnsupportedVersion) {
		t.Fatalf("responder err = %v", res.err)
	}
	a, b = tcpPair(t) // the caller's redial
	ini, res = runBoth(t, a, b, initiatorCfg(Version1, true), r)
	if ini.err != nil || res.err != nil {
		t.Fatalf("fallback: initiator: %v; responder: %v", ini.err, res.err)
	}
	if ini.res.Version != Version1 {
		t.Fatalf("fallback spoke version %d", ini.res.Version)
	}
}

func TestConfigVersions(t *testing.T) {
	ik, rk, _ := keys()
	for _, c := range []Config{
		{Version: 3}, {MinVersion: 3}, {Version: -1}, {Version: Version2, Fallback: true},
	} {
		c.PrivateKey, c.PeerKey, c.Authorized = ik, &rk.PublicKey, mustKeySet(t, &ik.PublicKey)
		if err := c.checkInitiator(); err == nil {
			t.Errorf("initiator accepted %+v", c)
		}
		if _, err := NewResponder(c, 1); err == nil {
			t.Errorf("responder accepted %+v", c)
		}
	}
}
