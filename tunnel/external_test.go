package tunnel

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// endsChildEnv makes the test binary, run by BenchmarkAgentsRoundTrip, the
// application and the backend instead of running tests (see TestMain).
const endsChildEnv = "TUNNEL_TEST_ENDS_CHILD"

// runEndsChild is the child process of BenchmarkAgentsRoundTrip, with
// endsChildEnv set to a number of clients: it serves an echo, prints its
// address, reads the entry's address from stdin, and has that many clients
// send 64-byte messages through it, each after the echo of the one before.
// At the next line on stdin it starts counting round trips, at the one
// after it prints the count, and at the third it ends. It returns the
// process's exit code.
func runEndsChild() int {
	clients, err := strconv.Atoi(os.Getenv(endsChildEnv))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", endsChildEnv, err)
		return 2
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(c, c)
		}
	}()
	fmt.Println(ln.Addr())
	in := bufio.NewReader(os.Stdin)
	entry, err := in.ReadString('\n')
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var done atomic.Int64
	for range clients {
		go func() {
			c, err := net.Dial("tcp", strings.TrimSpace(entry))
			if err != nil {
				return
			}
			msg := make([]byte, 64)
			for {
				if _, err := c.Write(msg); err != nil {
					return
				}
				if _, err := io.ReadFull(c, msg); err != nil {
					return
				}
				done.Add(1)
			}
		}()
	}
	in.ReadString('\n')
	from := done.Load()
	in.ReadString('\n')
	fmt.Println(done.Load() - from)
	in.ReadString('\n')
	return 0
}

// BenchmarkAgentsRoundTrip runs an entry and an exit in this process and
// the application and the backend in another, so that the agents idle
// between messages as separate agents do, and reports this process's CPU
// time per 64-byte round trip and the round trips per second, over 2 s,
// with 1 and with 8 clients at once. The figure that matters is -cpu 1, as
// the agents run. Run it with -benchtime 1x.
func BenchmarkAgentsRoundTrip(b *testing.B) {
	for _, clients := range []int{1, 8} {
		b.Run(strconv.Itoa(clients), func(b *testing.B) {
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), endsChildEnv+"="+strconv.Itoa(clients))
			stdin, err := cmd.StdinPipe()
			if err != nil {
				b.Fatal(err)
			}
			out, err := cmd.StdoutPipe()
			if err != nil {
				b.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer cmd.Wait()
			defer stdin.Close()
			lines := bufio.NewReader(out)
			echo, err := lines.ReadString('\n')
			if err != nil {
				b.Fatal(err)
			}
			a := start(b, strings.TrimSpace(echo))
			fmt.Fprintln(stdin, a.entryAddr)
			waitSession(b, a.entry)
			time.Sleep(200 * time.Millisecond) // the clients are going
			fmt.Fprintln(stdin)
			cpu := startCPU()
			const measured = 2 * time.Second
			time.Sleep(measured)
			fmt.Fprintln(stdin)
			line, err := lines.ReadString('\n')
			trips, perr := strconv.ParseFloat(strings.TrimSpace(line), 64)
			if err != nil || perr != nil || trips == 0 {
				b.Fatalf("round trips from the child: %q, %v", line, err)
			}
			cpu.report(b, trips/1e6, "cpu-µs/round-trip")
			b.ReportMetric(trips/measured.Seconds(), "round-trips/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}
