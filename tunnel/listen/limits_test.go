package listen

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/rs/zerolog"
)

// TestWarnFileLimit: a limit below lowFileLimit gives one warning line that
// says how many connections it allows and how to raise it; a limit at or
// above it gives nothing.
func TestWarnFileLimit(t *testing.T) {
	for _, tc := range []struct {
		soft, hard uint64
		warn       bool
		conns      uint64
	}{
		{1024, 1024, true, 1024 - fdReserve},
		{1023, 4096, true, 1023 - fdReserve},
		{lowFileLimit - 1, lowFileLimit, true, lowFileLimit - 1 - fdReserve},
		{8, 8, true, 0},
		{lowFileLimit, lowFileLimit, false, 0},
		{16383, 16384, false, 0}, // what Go leaves of a hard limit of 16384
		{1 << 20, 1 << 20, false, 0},
	} {
		var buf bytes.Buffer
		warnFileLimit(zerolog.New(&buf), tc.soft, tc.hard)
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if !tc.warn {
			if buf.Len() != 0 {
				t.Errorf("soft %d, hard %d: logged %q, want nothing", tc.soft, tc.hard, buf.String())
			}
			continue
		}
		if len(lines) != 1 {
			t.Errorf("soft %d, hard %d: logged %d lines, want one:\n%s", tc.soft, tc.hard, len(lines), buf.String())
			continue
		}
		var l struct {
			Level   string `json:"level"`
			Limit   uint64 `json:"open_files_limit"`
			Hard    uint64 `json:"hard_limit"`
			Conns   uint64 `json:"connections"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal([]byte(lines[0]), &l); err != nil {
			t.Fatalf("soft %d: %v: %s", tc.soft, err, lines[0])
		}
		if l.Level != "warn" || l.Limit != tc.soft || l.Hard != tc.hard || l.Conns != tc.conns {
			t.Errorf("soft %d, hard %d: got %+v, want a warning with the limits and %d connections", tc.soft, tc.hard, l, tc.conns)
		}
		for _, want := range []string{"open-file limit is low", "too many open files", "ulimit -n", "LimitNOFILE=", "nofile"} {
			if !strings.Contains(l.Message, want) {
				t.Errorf("soft %d: message %q does not mention %q", tc.soft, l.Message, want)
			}
		}
	}
}

// TestWarnLowFileLimit: WarnLowFileLimit reads this process's own soft
// limit, and warns exactly when it is low.
func TestWarnLowFileLimit(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	WarnLowFileLimit(zerolog.New(&buf))
	want := ""
	if lim.Cur < lowFileLimit {
		want = fmt.Sprintf(`"open_files_limit":%d,`, lim.Cur)
	}
	if got := buf.String(); (want == "") != (got == "") || !strings.Contains(got, want) {
		t.Errorf("soft limit %d: logged %q, want a line with %q", lim.Cur, got, want)
	}
}
