package listen

import (
	"sync"
	"testing"
)

// TestPendingGate: the gate admits up to its limit, and one more once a
// place is given back.
func TestPendingGate(t *testing.T) {
	g := NewGate(3)
	for i := range 3 {
		if !g.Enter() {
			t.Fatalf("enter %d of 3 refused", i+1)
		}
	}
	if g.Enter() {
		t.Fatal("a fourth enter admitted past the limit of 3")
	}
	if g.Pending() != 3 {
		t.Errorf("pending %d after a refusal, want 3", g.Pending())
	}
	g.Leave()
	if !g.Enter() {
		t.Error("enter refused after a leave")
	}

	// Concurrent enters never admit more than the limit.
	g = NewGate(10)
	var wg sync.WaitGroup
	var mu sync.Mutex
	admitted := 0
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if g.Enter() {
				mu.Lock()
				admitted++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if admitted != 10 || g.Pending() != 10 {
		t.Errorf("100 concurrent enters admitted %d (pending %d), want 10", admitted, g.Pending())
	}
}

func TestPendingLimit(t *testing.T) {
	for _, tc := range []struct {
		soft uint64
		want int
	}{{0, 1}, {fdReserve, 1}, {256, 120}, {1024, 504}, {65536, maxPending}} {
		if got := pendingLimit(tc.soft); got != tc.want {
			t.Errorf("pendingLimit(%d) = %d, want %d", tc.soft, got, tc.want)
		}
	}
}
