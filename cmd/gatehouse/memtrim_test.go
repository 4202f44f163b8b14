package main

import (
	"runtime"
	"runtime/metrics"
	"testing"
)

var sink []byte

// churn allocates n bytes of garbage in 64 KiB pieces.
func churn(n int) {
	for i := 0; i < n; i += 64 << 10 {
		sink = make([]byte, 64<<10)
	}
	sink = nil
}

func releasedBytes() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func TestMemTrimAfterBurst(t *testing.T) {
	runtime.GC()
	tr := newMemTrimmer()
	churn(96 << 20) // a burst: 96 MiB of garbage
	if tr.tick() {
		t.Fatal("trimmed during the burst")
	}
	before := releasedBytes()
	if !tr.tick() {
		t.Fatal("no trim after a quiet period following a 96 MiB burst")
	}
	if after := releasedBytes(); after <= before {
		t.Fatalf("heap released to the OS did not grow: %d -> %d bytes", before, after)
	}
	if tr.tick() {
		t.Fatal("trimmed again with nothing allocated since")
	}
}

func TestMemTrimNotUnderSteadyLoad(t *testing.T) {
	runtime.GC()
	tr := newMemTrimmer()
	_, live := tr.read()
	// 64 periods with 1 MiB allocated in each, or more beside a live heap
	// of over 16 MiB (other tests' in this process): never quiet
	per := max(1<<20, int(live/quietLiveShare)*2)
	for range 64 {
		churn(per)
		if tr.tick() {
			t.Fatal("trimmed while the process kept allocating")
		}
	}
}

// With a large live heap (many names loaded) a trickle that is small
// beside it, like the background walk over the stored names, still lets
// the burst's garbage go back; the same trickle beside a small heap does
// not (TestMemTrimNotUnderSteadyLoad).
func TestMemTrimBesideTrickleOnLargeHeap(t *testing.T) {
	live := make([][]byte, 160)
	for i := range live {
		live[i] = make([]byte, 1<<20)
	}
	runtime.GC() // the live heap is now 160 MiB: quiet is under 5 MiB a period
	tr := newMemTrimmer()
	churn(160 << 20) // a burst
	if tr.tick() {
		t.Fatal("trimmed during the burst")
	}
	before := releasedBytes()
	trimmed := false
	for i := 0; i < 4 && !trimmed; i++ {
		churn(1 << 20) // the trickle: 1 MiB a period
		trimmed = tr.tick()
	}
	if !trimmed {
		t.Fatal("no trim while 1 MiB a period was allocated beside a 160 MiB live heap")
	}
	if after := releasedBytes(); after <= before {
		t.Fatalf("heap released to the OS did not grow: %d -> %d bytes", before, after)
	}
	for range 36 { // 36 MiB more: over trimAfterBytes, under a quarter of the live heap
		churn(1 << 20)
		if tr.tick() {
			t.Fatal("trimmed again within a quarter of the live heap's allocation")
		}
	}
	// the trickle stops: what it left goes back at the first quiet period
	if !tr.tick() {
		t.Fatal("no trim once the trickle stopped, 36 MiB after the last")
	}
	runtime.KeepAlive(live)
}
