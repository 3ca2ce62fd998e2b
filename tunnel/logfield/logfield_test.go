package logfield

import (
	"testing"
	"time"
)

func TestLogDuration(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{999, "999ns"},
		{1234, "1.23µs"},
		{16330512 * time.Nanosecond, "16.3ms"},
		{163305120 * time.Nanosecond, "163ms"},
		{2345600 * time.Microsecond, "2.35s"},
		{30 * time.Second, "30s"},
		{90 * time.Minute, "1h30m0s"},
	} {
		if got := Duration(tc.d); got != tc.want {
			t.Errorf("Duration(%d) = %q, want %q", tc.d, got, tc.want)
		}
	}
}
