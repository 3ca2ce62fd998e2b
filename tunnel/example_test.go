package tunnel_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel"
)

// A program that embeds an exit serves a service itself: the exit hands it
// the streams to "greet", with the key of the entry that opened each. A
// program that embeds an entry dials that service.
func ExampleExit_Listen() {
	entryKey, err := handshake.GenerateKey(handshake.MinKeyBits)
	if err != nil {
		log.Fatal(err)
	}
	exitKey, err := handshake.GenerateKey(handshake.MinKeyBits)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())

	// The exit, on a loopback port, with no backend at all.
	authorized, err := handshake.NewKeySet(&entryKey.PublicKey)
	if err != nil {
		log.Fatal(err)
	}
	exit, err := tunnel.NewExit(tunnel.ExitConfig{Key: exitKey, Authorized: authorized}, zerolog.Nop())
	if err != nil {
		log.Fatal(err)
	}
	greet, err := exit.Listen("greet")
	if err != nil {
		log.Fatal(err)
	}
	defer greet.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	exitDone := make(chan error)
	go func() { exitDone <- exit.Serve(ctx, ln) }()
	go func() {
		for {
			c, err := greet.Accept()
			if err != nil {
				return // closed
			}
			tc := c.(*tunnel.Conn)
			who := "a stranger"
			if tc.PeerFingerprint() == handshake.Fingerprint(&entryKey.PublicKey) {
				who = "the entry we know"
			}
			fmt.Fprintf(c, "hello %s, this is service %s\n", who, tc.Service())
			c.Close()
		}
	}()

	// The entry: Run keeps its session with the exit, DialContext opens streams.
	settings := tunnel.EntrySettings{Peers: []string{ln.Addr().String()}} // the rest at their defaults
	entry, err := tunnel.NewEntry(tunnel.EntryConfig{Settings: settings, Key: entryKey, PeerKey: &exitKey.PublicKey}, zerolog.Nop())
	if err != nil {
		log.Fatal(err)
	}
	entryDone := make(chan error)
	go func() { entryDone <- entry.Run(ctx) }()

	c, err := entry.DialContext(ctx, "tcp", "greet")
	if err != nil {
		log.Fatal(err)
	}
	answer, err := io.ReadAll(c)
	if err != nil {
		log.Fatal(err)
	}
	c.Close()
	fmt.Print(string(answer))
	fmt.Println("the exit's key:", c.(*tunnel.Conn).PeerFingerprint() == handshake.Fingerprint(&exitKey.PublicKey))

	stop()
	fmt.Println(<-entryDone, <-exitDone)
	// Output:
	// hello the entry we know, this is service greet
	// the exit's key: true
	// <nil> <nil>
}

// A program that embeds an entry dials the services of an exit that
// forwards them to their backends; the exit's refusal is a *StatusError.
func ExampleEntry_DialContext() {
	entryKey, err := handshake.GenerateKey(handshake.MinKeyBits)
	if err != nil {
		log.Fatal(err)
	}
	exitKey, err := handshake.GenerateKey(handshake.MinKeyBits)
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())

	// A backend that echoes what it reads, on a loopback port.
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close()
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return // closed
			}
			go func() {
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()

	// The exit forwards the service "echo" to the backend.
	authorized, err := handshake.NewKeySet(&entryKey.PublicKey)
	if err != nil {
		log.Fatal(err)
	}
	exitSettings := tunnel.ExitSettings{Services: []tunnel.ExitService{{Name: "echo", Backend: backend.Addr().String()}}}
	exit, err := tunnel.NewExit(tunnel.ExitConfig{Settings: exitSettings, Key: exitKey, Authorized: authorized}, zerolog.Nop())
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	exitDone := make(chan error)
	go func() { exitDone <- exit.Serve(ctx, ln) }()

	settings := tunnel.EntrySettings{Peers: []string{ln.Addr().String()}} // the rest at their defaults
	entry, err := tunnel.NewEntry(tunnel.EntryConfig{Settings: settings, Key: entryKey, PeerKey: &exitKey.PublicKey}, zerolog.Nop())
	if err != nil {
		log.Fatal(err)
	}
	entryDone := make(chan error)
	go func() { entryDone <- entry.Run(ctx) }()

	c, err := entry.DialContext(ctx, "tcp", "echo")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprint(c, "ping through the tunnel")
	c.(*tunnel.Conn).CloseWrite() // the backend reads EOF, and closes after echoing
	echo, err := io.ReadAll(c)
	if err != nil {
		log.Fatal(err)
	}
	c.Close()
	fmt.Println(string(echo))

	_, err = entry.DialContext(ctx, "tcp", "mail")
	var refused *tunnel.StatusError
	if errors.As(err, &refused) {
		fmt.Printf("%s: %s\n", refused.Status, refused.Message)
	}

	stop()
	fmt.Println(<-entryDone, <-exitDone)
	// Output:
	// ping through the tunnel
	// unknown service: unknown service "mail": this exit has echo
	// <nil> <nil>
}
