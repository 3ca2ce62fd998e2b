package tunnel

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/handshake"
)

// TestExitReloadRevokes: a reload that cannot apply changes nothing; one that removes the
// entry's key gives its session GoAway, lets its open stream go on until the drain timeout
// and refuses the entry's next session; putting the key back lets the entry in again.
func TestExitReloadRevokes(t *testing.T) {
	a := startWith(t, echoBackend(t), func(x *ExitSettings, _ *EntrySettings) { x.DrainTimeout = time.Second })
	ks := testKeys()
	entryKey, exitKey := ks[0], ks[1]
	roundTrip(t, a.entryAddr, []byte("before"))

	if _, err := a.exit.Reload(exitKey, &handshake.KeySet{}); err == nil {
		t.Fatal("Reload with no authorized key succeeded")
	}
	roundTrip(t, a.entryAddr, []byte("after a failed reload"))

	held, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	echo := func(msg string) error {
		held.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := held.Write([]byte(msg)); err != nil {
			return err
		}
		_, err := io.ReadFull(held, make([]byte, len(msg)))
		return err
	}
	if err := echo("held"); err != nil {
		t.Fatal(err)
	}

	stranger, err := handshake.GenerateKey(handshake.MinKeyBits)
	if err != nil {
		t.Fatal(err)
	}
	others, err := handshake.NewKeySet(&stranger.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	closing, err := a.exit.Reload(exitKey, others)
	if err != nil || closing != 1 {
		t.Fatalf("Reload removing the entry's key: %d sessions closing, %v; want 1, nil", closing, err)
	}
	// The open stream works until the drain timeout closes its session.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := echo("draining")
		if err != nil {
			if d := time.Since(start); d < time.Second {
				t.Fatalf("the open stream broke %v after the reload, before the drain timeout (1s): %v", d, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stream of a removed key still works 10s after the reload")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The entry's next session is refused.
	if a.entry.Healthy() {
		t.Error("the entry has a session after its key was removed")
	}

	entryOnly, err := handshake.NewKeySet(&entryKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if closing, err := a.exit.Reload(exitKey, entryOnly); err != nil || closing != 0 {
		t.Fatalf("Reload putting the key back: %d closing, %v", closing, err)
	}
	for !a.entry.Healthy() {
		if time.Now().After(deadline) {
			t.Fatal("the entry has no session 10s after its key was put back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	roundTrip(t, a.entryAddr, []byte("back in"))
}
