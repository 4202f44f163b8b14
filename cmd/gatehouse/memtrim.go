package main

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Memory given back when traffic stops.
//
// With the default GOGC=100 the Go heap may hold up to twice its live
// data before the next collection, and that garbage stays resident until
// a collection that only more allocation would trigger. A proxy's
// traffic comes in bursts: after a burst of handshakes the process keeps
// the burst's garbage while it holds thousands of idle connections,
// which made an idle TLS connection cost 21–23 KiB of RSS where its live
// state is about 7 KiB (bench/README.md, idle). So when the process has
// allocated at least trimAfterBytes since the last trim and then
// allocates almost nothing for a whole trimQuiet period, it runs one
// collection and returns the freed pages to the OS (debug.FreeOSMemory).
//
// The cost is bounded by the allocation threshold: one collection per
// trimAfterBytes allocated, and only at a quiet moment, so a steady load
// never sees it. GOGC and GOMEMLIMIT keep their usual meaning.
const (
	trimQuiet      = time.Second
	trimAfterBytes = 32 << 20
	// quietBytes is what "almost nothing" allows per trimQuiet period:
	// timers, health checks and the odd request.
	quietBytes = 256 << 10
)

// memTrimmer watches the runtime's cumulative allocation counter.
type memTrimmer struct {
	sample   []metrics.Sample
	last     uint64 // allocated bytes at the previous tick
	trimmed  uint64 // allocated bytes at the last trim
	onTrim   func() // tests
	interval time.Duration
}

func newMemTrimmer() *memTrimmer {
	t := &memTrimmer{
		sample:   []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}},
		interval: trimQuiet,
	}
	t.last = t.allocated()
	t.trimmed = t.last
	return t
}

func (t *memTrimmer) allocated() uint64 {
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return t.sample[0].Value.Uint64()
}

// tick runs once per interval and reports whether it trimmed.
func (t *memTrimmer) tick() bool {
	now := t.allocated()
	quiet := now-t.last < quietBytes
	t.last = now
	if !quiet || now-t.trimmed < trimAfterBytes {
		return false
	}
	debug.FreeOSMemory()
	t.trimmed = t.allocated()
	t.last = t.trimmed
	if t.onTrim != nil {
		t.onTrim()
	}
	return true
}

// run ticks until ctx ends.
func (t *memTrimmer) run(ctx context.Context) {
	tk := time.NewTicker(t.interval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
			t.tick()
		}
	}
}
