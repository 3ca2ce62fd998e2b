// Package mitm attacks the tunnel from the middle: its tests put a
// man-in-the-middle TCP proxy between a real entry agent and a real exit
// agent (the built binary), parse the handshake messages and the records
// that pass (PROTOCOL.md sections 2 and 3), and tamper with them on command:
// flip bits, drop, duplicate, swap, reflect or forge records, inject length
// fields, rewrite handshake messages, cut the connection with FIN or RST.
//
// Every test checks three things: the connection is torn down, no
// application byte that the peer did not send is ever delivered (the backend
// and the client check what they receive against what the other end sent,
// and see an abort rather than a clean end), and the agents' logs say what
// happened. The package has only tests.
package mitm
