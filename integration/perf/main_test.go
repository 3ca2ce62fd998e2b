package perf

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// The test binary runs again as a helper process, the client or the echo
// server of the round-trip figure, when helperEnv names a mode. A process
// of its own can be pinned to a CPU with taskset like the agents are.
const (
	helperEnv      = "TUNNEL_PERF_HELPER"
	helperEcho     = "echo" // serve echo on 127.0.0.1:0, print the address, stop at EOF on stdin
	helperRTT      = "rtt"  // time round trips to helperAddrEnv, print "p50ns p99ns"
	helperAddrEnv  = "TUNNEL_PERF_HELPER_ADDR"
	helperCountEnv = "TUNNEL_PERF_HELPER_COUNT"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		if err := runHelper(mode); err != nil {
			fmt.Fprintf(os.Stderr, "perf helper %s: %v\n", mode, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	harness.Main(m)
}

func runHelper(mode string) error {
	switch mode {
	case helperEcho:
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		fmt.Println(ln.Addr())
		go func() {
			io.Copy(io.Discard, os.Stdin) // the parent closed stdin or died
			os.Exit(0)
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			go func() {
				defer c.Close()
				echo(c)
			}()
		}
	case helperRTT:
		count, err := strconv.Atoi(os.Getenv(helperCountEnv))
		if err != nil || count < 100 {
			return fmt.Errorf("%s=%q: want a count of at least 100", helperCountEnv, os.Getenv(helperCountEnv))
		}
		p50, p99, err := roundTrips(os.Getenv(helperAddrEnv), count)
		if err != nil {
			return err
		}
		fmt.Println(p50.Nanoseconds(), p99.Nanoseconds())
		return nil
	}
	return fmt.Errorf("unknown mode %q", mode)
}

// echo sends back every byte it reads from c until EOF or an error.
func echo(c net.Conn) {
	buf := make([]byte, 16<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// rttSize is the size of a round-trip message.
const rttSize = 64

// roundTrips connects to an echo server at addr, sends one rttSize message
// at a time and waits for its echo, count times after a tenth as many for
// warm-up, and returns the median and 99th percentile of the round trips.
// Every message differs from the one before, and every echo is checked.
func roundTrips(addr string, count int) (p50, p99 time.Duration, err error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Minute)); err != nil {
		return 0, 0, err
	}
	msg, got := make([]byte, rttSize), make([]byte, rttSize)
	for i := range msg {
		msg[i] = byte(i*7 + 1)
	}
	warmup := count / 10
	lat := make([]time.Duration, 0, count)
	for i := range warmup + count {
		binary.LittleEndian.PutUint64(msg, uint64(i))
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, 0, fmt.Errorf("round trip %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return 0, 0, fmt.Errorf("round trip %d: reading the echo: %w", i, err)
		}
		d := time.Since(start)
		if !bytes.Equal(got, msg) {
			return 0, 0, fmt.Errorf("round trip %d: the echo differs from the message sent", i)
		}
		if i >= warmup {
			lat = append(lat, d)
		}
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

// helperCommand returns a command that runs this test binary as the helper
// mode, pinned to CPU 0 when pin is set.
func helperCommand(b *testing.B, pin bool, mode string, env ...string) *exec.Cmd {
	b.Helper()
	self, err := os.Executable()
	if err != nil {
		b.Fatalf("finding the test binary to run a helper: %v", err)
	}
	cmd := exec.Command(self)
	if pin {
		cmd = exec.Command(tasksetPath(b), "-c", "0", self)
	}
	cmd.Env = append(os.Environ(), append([]string{helperEnv + "=" + mode}, env...)...)
	return cmd
}

// startEchoHelper starts an echo server process and returns its address
// and process id; t.Cleanup stops it.
func startEchoHelper(b *testing.B, pin bool) (addr string, pid int) {
	b.Helper()
	cmd := helperCommand(b, pin, helperEcho)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatalf("starting the echo helper: %v", err)
	}
	b.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("echo helper printed no address: %v; stderr:\n%s", err, stderr.String())
	}
	return strings.TrimSpace(line), cmd.Process.Pid
}

// runRTTHelper runs the round-trip client against addr in a process of its
// own and returns the median and 99th percentile.
func runRTTHelper(b *testing.B, pin bool, addr string, count int) (p50, p99 time.Duration) {
	b.Helper()
	cmd := helperCommand(b, pin, helperRTT, helperAddrEnv+"="+addr, helperCountEnv+"="+strconv.Itoa(count))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("round trips to %s: %v\n%s", addr, err, stderr.String())
	}
	var n50, n99 int64
	if _, err := fmt.Sscan(string(out), &n50, &n99); err != nil {
		b.Fatalf("round-trip helper printed %q: %v", out, err)
	}
	return time.Duration(n50), time.Duration(n99)
}

// tasksetPath finds taskset, skipping the benchmark (failing it in CI) when
// it is missing.
func tasksetPath(b *testing.B) string {
	b.Helper()
	p, err := exec.LookPath("taskset")
	harness.RequireOrSkip(b, "taskset (Debian package util-linux)", err == nil)
	return p
}

// errNotEcho is returned when an echo differs from what was sent.
var errNotEcho = errors.New("the echo differs from the bytes sent")
