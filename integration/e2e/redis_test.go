package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestRedis puts a real redis-server behind the exit and, through the
// entry, stores and reads back a 2 MiB value and runs 1000 pipelined INCRs.
func TestRedis(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	redis := harness.StartRedis(t)
	tun := r.StartTunnel(t, redis, harness.Options{}, harness.Options{})
	c := harness.Dial(t, tun.Entry.Addr, 60*time.Second)
	rd := bufio.NewReader(c)

	value := make([]byte, 2<<20)
	rand.NewChaCha8([32]byte{9}).Read(value)
	fmt.Fprintf(c, "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n%s\r\n", len(value), value)
	c.Write([]byte("*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n"))
	var pipeline strings.Builder
	for range 1000 {
		pipeline.WriteString("*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n")
	}
	c.Write([]byte(pipeline.String()))

	if line, err := rd.ReadString('\n'); err != nil || line != "+OK\r\n" {
		t.Fatalf("SET: %q, %v", line, err)
	}
	if line, err := rd.ReadString('\n'); err != nil || line != fmt.Sprintf("$%d\r\n", len(value)) {
		t.Fatalf("GET header: %q, %v", line, err)
	}
	got := make([]byte, len(value)+2)
	if _, err := io.ReadFull(rd, got); err != nil {
		t.Fatalf("GET value: %v", err)
	}
	if !bytes.Equal(got[:len(value)], value) || string(got[len(value):]) != "\r\n" {
		t.Fatal("GET returned another value than SET stored")
	}
	for i := 1; i <= 1000; i++ {
		if line, err := rd.ReadString('\n'); err != nil || line != fmt.Sprintf(":%d\r\n", i) {
			t.Fatalf("INCR %d: %q, %v", i, line, err)
		}
	}
	tun.CheckNoErrors(t)
}
