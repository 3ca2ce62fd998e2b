// Command tunnel is the encrypting TCP tunnel sidecar: an entry agent takes plaintext TCP from
// apps and carries it, encrypted and authenticated, to an exit agent that dials the backend.
// This package only parses flags, builds the logger and calls into config, handshake and tunnel.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(runWithSignals(os.Args[1:]))
}

// runWithSignals runs the command with a context cancelled on the first SIGINT or SIGTERM, which
// starts a graceful shutdown. A second signal abandons the drain: it returns 130 at once.
func runWithSignals(args []string) int {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, os.Stdout, os.Stderr) }()

	select {
	case code := <-done:
		return code
	case <-sigs:
		cancel()
	}
	select {
	case code := <-done:
		return code
	case s := <-sigs:
		fmt.Fprintf(os.Stderr, "tunnel: second %v: exiting without waiting for open streams\n", s)
		return 130
	}
}
