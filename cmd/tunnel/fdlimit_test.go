package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// statusFlood opens n connections to the status endpoint at addr, each sending one keep-alive
// request and then staying open, and returns how many were answered within 5s (whether or
// not the endpoint answers all of them) and a function that closes them all.
func statusFlood(t *testing.T, addr string, n int) (answered int, closeAll func()) {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	closeAll = func() {
		for _, c := range conns {
			c.Close()
		}
	}
	t.Cleanup(closeAll)
	var ok atomic.Int64
	var wg sync.WaitGroup
	for range n {
		c, err := net.Dial("tcp", addr) // the kernel completes it, accepted or not
		if err != nil {
			t.Fatalf("connection %d of %d to the status endpoint: %v", len(conns)+1, n, err)
		}
		conns = append(conns, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: status\r\n\r\n")
			if line, err := bufio.NewReader(c).ReadString('\n'); err == nil && strings.HasPrefix(line, "HTTP/1.1 200") {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	return int(ok.Load()), closeAll
}

// TestFileLimit runs the real exit with a low open-file limit (prlimit) and floods its status
// endpoint with keep-alive clients that stay connected. The exit must stay up and keep serving
// entries: with 256 descriptors, the status endpoint's cap leaves it enough, and it answers
// every client by closing idle ones; with 40, even its own listener runs out, and it waits
// for descriptors instead of ending, logging why, then takes the entry once the flood closes.
func TestFileLimit(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) is not installed")
	}
	dir := t.TempDir()
	keyPair(t, dir, "exit")
	keyPair(t, dir, "entry")
	back, _ := backend(t, false)
	for _, tc := range []struct {
		name     string
		nofile   int
		starved  bool // the exit runs out of descriptors, and takes the entry after the flood
		answered int  // status clients answered, at least
	}{
		{"status flood within the limit", 256, false, 400},
		{"out of descriptors", 40, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			limit := func(cmd *exec.Cmd) {
				cmd.Args = append([]string{prlimit, fmt.Sprintf("--nofile=%d:%d", tc.nofile, tc.nofile), cmd.Path}, cmd.Args[1:]...)
				cmd.Path = prlimit
			}
			x := startChildWith(t, limit, "--log-format", "json", "exit", "--listen", "127.0.0.1:0", "--status-addr", "127.0.0.1:0",
				"--forward", back, "--key", filepath.Join(dir, "exit.key"), "--authorized-keys", filepath.Join(dir, "entry.pub"))
			exitAddr := x.waitLine(t, "listening", 1)["addr"].(string)
			statusAddr := x.waitLine(t, "status endpoint listening", 1)["addr"].(string)

			answered, closeFlood := statusFlood(t, statusAddr, 400)
			if answered < tc.answered {
				t.Errorf("%d of 400 keep-alive status clients answered, want %d", answered, tc.answered)
			}
			n := startChild(t, "--log-format", "json", "entry", "--listen", "127.0.0.1:0", "--peer", exitAddr,
				"--handshake-timeout", "2s", "--key", filepath.Join(dir, "entry.key"), "--peer-key", filepath.Join(dir, "exit.pub"))
			entryAddr := n.waitLine(t, "listening", 1)["addr"].(string)
			if tc.starved {
				// The exit's own listener fails to accept the entry, and says why.
				x.waitFor(t, func(m map[string]any) bool {
					msg, _ := m["message"].(string)
					return m["addr"] == exitAddr && strings.HasPrefix(msg, "cannot accept connections: out of file descriptors")
				})
				select {
				case <-x.done:
					t.Fatalf("the exit ended out of descriptors: %v; log:\n%s", x.err, x.log.String())
				default:
				}
				closeFlood()
			}
			n.waitLine(t, "session established", 1)
			if err := echoOnce(entryAddr, 16<<10); err != nil {
				t.Fatalf("through the tunnel: %v; exit log:\n%s", err, x.log.String())
			}
			closeFlood()
			select {
			case <-x.done:
				t.Fatalf("the exit ended: %v; log:\n%s", x.err, x.log.String())
			default:
			}
		})
	}
}

// waitFor waits up to 20s for a JSON log line of c for which match is true.
func (c *child) waitFor(t *testing.T, match func(map[string]any) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, line := range strings.Split(c.log.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && match(m) {
				return
			}
		}
		select {
		case <-c.done:
			t.Fatalf("%v ended while waiting for a log line: %v; log:\n%s", c.cmd.Args[1:], c.err, c.log.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v: no such log line within 20s; log:\n%s", c.cmd.Args[1:], c.log.String())
		}
	}
}
