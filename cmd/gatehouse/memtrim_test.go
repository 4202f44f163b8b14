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
	tr := newMemTrimmer()
	for range 64 { // 64 periods with 1 MiB allocated in each: 64 MiB, never quiet
		churn(1 << 20)
		if tr.tick() {
			t.Fatal("trimmed while the process kept allocating")
		}
	}
}
