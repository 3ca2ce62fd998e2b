package handshake

import (
	"crypto/rsa"
	"errors"
	"strings"
	"testing"
)

// TestPinnedKeySet: with PeerKeys the initiator accepts whichever of the pinned keys the
// responder presents (both the old and the new key while the exit's key is rotated), and
// refuses a key that is none of them, naming them all.
func TestPinnedKeySet(t *testing.T) {
	ik, rk, other := keys()
	for _, pinned := range [][]string{{"other", "res"}, {"res"}} {
		var set []*rsa.PublicKey
		for _, name := range pinned {
			set = append(set, map[string]*rsa.PublicKey{"other": &other.PublicKey, "res": &rk.PublicKey}[name])
		}
		a, b := tcpPair(t)
		ini, res := runBoth(t, a, b, &Config{PrivateKey: ik, PeerKeys: mustKeySet(t, set...)}, newResponder(t, rk, &ik.PublicKey))
		if ini.err != nil || res.err != nil {
			t.Fatalf("pinned %v: initiator: %v; responder: %v", pinned, ini.err, res.err)
		}
		if ini.res.PeerFingerprint != Fingerprint(&rk.PublicKey) || ini.res.PeerKey != &rk.PublicKey {
			t.Errorf("pinned %v: result names %s, want the responder's key %s", pinned, ini.res.PeerFingerprint, Fingerprint(&rk.PublicKey))
		}
	}

	a, b := tcpPair(t)
	ini, _ := runBoth(t, a, b, &Config{PrivateKey: ik, PeerKey: &rk.PublicKey, PeerKeys: mustKeySet(t, &other.PublicKey, &ik.PublicKey)},
		newResponder(t, rk, &ik.PublicKey))
	if !errors.Is(ini.err, ErrUnknownKey) {
		t.Fatalf("responder key outside PeerKeys (PeerKey is ignored): err = %v, want ErrUnknownKey", ini.err)
	}
	for _, want := range []string{"none of the pinned keys", Fingerprint(&rk.PublicKey), Fingerprint(&other.PublicKey), Fingerprint(&ik.PublicKey)} {
		if !strings.Contains(ini.err.Error(), want) {
			t.Errorf("initiator error %q lacks %q", ini.err, want)
		}
	}
}

// TestResponderWithKeys: the new Responder answers with its new key and accepts only its new
// set, and shares the old one's bounds.
func TestResponderWithKeys(t *testing.T) {
	ik, rk, other := keys()
	r := newResponder(t, rk, &ik.PublicKey)
	r2, err := r.WithKeys(other, mustKeySet(t, &rk.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	if r2.adm != r.adm {
		t.Error("WithKeys made new bounds; want the old ones shared")
	}
	a, b := tcpPair(t)
	ini, res := runBoth(t, a, b, &Config{PrivateKey: rk, PeerKey: &other.PublicKey}, r2)
	if ini.err != nil || res.err != nil {
		t.Fatalf("new keys: initiator: %v; responder: %v", ini.err, res.err)
	}
	a, b = tcpPair(t)
	if _, res := runBoth(t, a, b, &Config{PrivateKey: ik, PeerKey: &other.PublicKey}, r2); !errors.Is(res.err, ErrUnknownKey) {
		t.Fatalf("initiator key no longer authorized: responder err = %v, want ErrUnknownKey", res.err)
	}
	if _, err := r.WithKeys(other, &KeySet{}); err == nil {
		t.Error("WithKeys accepted an empty authorized set")
	}
}
