// Package soak runs the real tunnel binary under sustained connection
// churn and checks that the agents give back what they took: about a
// thousand concurrent connections are opened and closed through an
// entry/exit pair for a minute (TUNNEL_SOAK_DURATION), each exchanging a
// small payload with a hash-echo backend, and afterwards the goroutines,
// file descriptors, heap and open streams that each agent reports on its
// status endpoint (--status-addr) must be back near their idle baseline.
// The package has only tests.
package soak
