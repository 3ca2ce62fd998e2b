package handshake

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestAlertReasonText: a long reason is cut to the field's 255 bytes without
// splitting a character, and a peer's reason loses control and format
// characters (bidi overrides, zero-width) before anyone logs it.
func TestAlertReasonText(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes
	m, err := parseAlert((&alert{code: AlertBusy, reason: long}).body())
	if err != nil {
		t.Fatal(err)
	}
	if !utf8.ValidString(m.reason) || len(m.reason) != 254 || !strings.HasPrefix(long, m.reason) {
		t.Errorf("a 400-byte reason came back as %d bytes %q", len(m.reason), m.reason)
	}

	raw := "key \u202eSHA256:x\u200b is\nnot authorized"
	body := append([]byte{byte(AlertUnknownKey), byte(len(raw))}, raw...)
	m, err = parseAlert(body)
	if err != nil {
		t.Fatal(err)
	}
	if want := "key ?SHA256:x? is?not authorized"; m.reason != want {
		t.Errorf("reason %q came back as %q, want %q", raw, m.reason, want)
	}
}
