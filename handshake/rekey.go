package handshake

import "crypto/rsa"

// WithKeys returns a Responder that answers with priv and accepts the
// initiator keys in authorized, and otherwise is r: it shares r's bounds on
// handshakes and private-key operations in progress, so that swapping it in
// for r (a reload of the keys) neither resets nor doubles them. Handshakes
// that r has begun finish with r's keys.
func (r *Responder) WithKeys(priv *rsa.PrivateKey, authorized *KeySet) (*Responder, error) {
	nr := *r
	nr.cfg.PrivateKey, nr.cfg.Authorized = priv, authorized
	if err := nr.cfg.checkResponder(); err != nil {
		return nil, err
	}
	return &nr, nil
}
