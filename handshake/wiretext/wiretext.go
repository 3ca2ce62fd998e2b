// Package wiretext handles the short human-readable text fields of the wire
// protocol (ALERT reasons, stream status messages): cutting our own text to
// a field's length limit, and making a peer's text safe to put in a log.
package wiretext

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// Cut returns s cut to at most n bytes, never in the middle of a UTF-8
// encoded character, so that text that was valid UTF-8 stays valid.
func Cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Back off over at most utf8.UTFMax-1 continuation bytes to the start of
	// the character that would be split.
	for i := n; i > 0 && i > n-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			return s[:i]
		}
	}
	return s[:n]
}

// Printable makes a peer's text safe for a log line: it is made valid UTF-8,
// and every character that is not graphic (letters, marks, numbers,
// punctuation, symbols, spaces) becomes '?': control characters, Unicode
// format characters (bidi overrides and isolates, zero-width spaces and
// joiners, the byte order mark), line and paragraph separators,
// private-use and unassigned code points. So does U+FFFD, which would
// otherwise pass for a decoding error.
func Printable(b []byte) string {
	return strings.Map(func(r rune) rune {
		if !unicode.IsGraphic(r) || r == utf8.RuneError {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(string(b), "?"))
}
