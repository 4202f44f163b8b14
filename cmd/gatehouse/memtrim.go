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
// trimAfterBytes allocated (or a quarter of the live heap, if more), and
// only at a quiet moment, so a steady load never sees it. GOGC and
// GOMEMLIMIT keep their usual meaning.
//
// "Quiet" is relative to the live heap: with many names loaded a
// background trickle goes on for minutes after a burst (the walk over
// 100,000 stored names reads ~8 MB a second for 100 s), and a fixed
// threshold kept the burst's garbage (about as much again as the live
// heap) resident until it ended. A period allocating under 1/32 of the
// live heap would bring the next collection no sooner than half a minute
// away, so it counts as quiet too, with trims then a quarter of the live
// heap's allocation apart; once the trickle stops, the first truly quiet
// period gives back what it left.
const (
	trimQuiet      = time.Second
	trimAfterBytes = 32 << 20
	// quietBytes is what "almost nothing" allows per trimQuiet period
	// whatever the heap: timers, health checks and the odd request.
	quietBytes = 256 << 10
	// quietLiveShare: a period allocating under live/quietLiveShare is
	// quiet too; trimAfterLiveShare: the trims are at least
	// live/trimAfterLiveShare of allocation apart.
	quietLiveShare     = 32
	trimAfterLiveShare = 4
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
		sample:   []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/live:bytes"}},
		interval: trimQuiet,
	}
	t.last = t.allocated()
	t.trimmed = t.last
	return t
}

// allocated is the bytes allocated since the process started; live, the
// heap's live bytes as the last collection marked them.
func (t *memTrimmer) read() (allocated, live uint64) {
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() == metrics.KindUint64 {
		allocated = t.sample[0].Value.Uint64()
	}
	if t.sample[1].Value.Kind() == metrics.KindUint64 {
		live = t.sample[1].Value.Uint64()
	}
	return allocated, live
}

func (t *memTrimmer) allocated() uint64 {
	a, _ := t.read()
	return a
}

// tick runs once per interval and reports whether it trimmed.
func (t *memTrimmer) tick() bool {
	now, live := t.read()
	period, since := now-t.last, now-t.trimmed
	t.last = now
	switch {
	case period < quietBytes && since >= trimAfterBytes:
		// quiet: whatever is left since the last trim goes back
	case period < live/quietLiveShare && since >= max(trimAfterBytes, live/trimAfterLiveShare):
		// a trickle beside a large heap
	default:
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
