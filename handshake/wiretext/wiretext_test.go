package wiretext

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCut(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"", 3, ""},
		{"abc", 3, "abc"},
		{"abcd", 3, "abc"},
		{"aé", 2, "a"},                          // é is 2 bytes
		{"aé", 3, "aé"},                         //
		{"a€", 2, "a"},                          // € is 3 bytes
		{"a€", 3, "a"},                          //
		{"a𝄞", 4, "a"},                          // 𝄞 is 4 bytes
		{"a𝄞b", 5, "a𝄞"},                        //
		{"\x80\x80\x80\x80\x80", 2, "\x80\x80"}, // not UTF-8: cut at n
	} {
		if got := Cut(tc.s, tc.n); got != tc.want {
			t.Errorf("Cut(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
	}
	// Every cut of valid text at every length stays valid and within the limit.
	s := strings.Repeat("aé€𝄞", 80)
	for n := 0; n <= len(s); n++ {
		got := Cut(s, n)
		if len(got) > n || len(got) < n-3 || !utf8.ValidString(got) || !strings.HasPrefix(s, got) {
			t.Fatalf("Cut(%d) = %d bytes, valid %v", n, len(got), utf8.ValidString(got))
		}
	}
}

func TestPrintable(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"key SHA256:x is not authorized", "key SHA256:x is not authorized"},
		{"café, 東京, ελληνικά", "café, 東京, ελληνικά"},
		{"a\nb\tc\x00d\x7f\u0085e", "a?b?c?d??e"},                       // C0, DEL, C1
		{"evil\u202egpj.exe", "evil?gpj.exe"},                           // right-to-left override
		{"\u2066x\u2069 \u200bz\u200c\u200d\u2060\ufeff", "?x? ?z????"}, // isolates, zero-width, BOM
		{"line\u2028para\u2029", "line?para?"},                          // separators
		{"\ue000\U0010fffd", "??"},                                      // private use
		{"bad \xff\xfe utf8", "bad ? utf8"},                             // invalid bytes
		{"\ufffd", "?"},
	} {
		if got := Printable([]byte(tc.in)); got != tc.want {
			t.Errorf("Printable(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
