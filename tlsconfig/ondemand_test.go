package tlsconfig

import (
	"testing"
	"time"
)

func TestWindowLimiter(t *testing.T) {
	l := newWindowLimiter(3, time.Minute)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 3; i++ {
		if !l.take(t0.Add(time.Duration(i) * time.Second)) {
			t.Fatalf("event %d refused within the limit", i)
		}
	}
	if l.take(t0.Add(59 * time.Second)) {
		t.Error("4th event within a minute allowed")
	}
	// the window slides: a minute after the first event, one more fits
	if !l.take(t0.Add(60 * time.Second)) {
		t.Error("event a minute after the first refused")
	}
	if l.take(t0.Add(60*time.Second + time.Millisecond)) {
		t.Error("second event allowed though only one slot freed")
	}
	l.set(1, time.Hour) // reload to a stricter limit
	if !l.take(t0.Add(2*time.Minute)) || l.take(t0.Add(30*time.Minute)) {
		t.Error("1/1h not applied after set")
	}
}

func TestPruneBoundsMemory(t *testing.T) {
	m := map[string]time.Time{}
	now := time.Now()
	for i := 0; i < maxDecisionCache; i++ {
		m[string(rune(i))+"x"] = now.Add(time.Hour) // none expired
		prune(m, func(v time.Time) bool { return now.After(v) })
	}
	if len(m) >= maxDecisionCache {
		t.Errorf("cache grew to %d entries", len(m))
	}
}
