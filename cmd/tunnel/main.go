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

// runWithSignals runs the command and is the process's one signal loop. The first SIGINT or
// SIGTERM cancels the command's context, which starts a graceful shutdown; a second one
// abandons the drain: it returns 130 at once. SIGHUP never ends the process: each one is handed
// to the command as a reload request (an agent logs it), before and during a drain alike.
func runWithSignals(args []string) int {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reload := make(chan struct{}, 1)
	done := make(chan int, 1)
	go func() { done <- run(ctx, args, os.Stdout, os.Stderr, reload) }()

	stopping := false
	for {
		select {
		case code := <-done:
			return code
		case s := <-sigs:
			switch {
			case s == syscall.SIGHUP:
				select {
				case reload <- struct{}{}:
				default: // one is pending already
				}
			case !stopping:
				stopping = true
				cancel()
			default:
				fmt.Fprintf(os.Stderr, "tunnel: second %v: exiting without waiting for open streams\n", s)
				return 130
			}
		}
	}
}
