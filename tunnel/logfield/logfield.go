// Package logfield holds the conventions of the log fields that every agent
// writes the same way:
//
//   - a duration is a string with its unit, to about three significant
//     digits: handshake="16.3ms", drain_timeout="30s" (Duration);
//   - bytes are counted per direction of the application's connection:
//     bytes_to_backend (from the application towards the backend) and
//     bytes_to_app (back), so that one name means one direction on both
//     the entry and the exit.
package logfield

import "time"

// Duration formats d for a log field: Go's notation with its unit,
// rounded to about three significant digits (16.3ms, 2.35s, 30s).
func Duration(d time.Duration) string {
	r := time.Duration(1)
	for d/r >= 1000 {
		r *= 10
	}
	return d.Round(r).String()
}
