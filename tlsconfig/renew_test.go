package tlsconfig

import (
	"testing"
	"time"
)

// The check interval is a tenth of the shortest lifetime held, within
// the configured interval and no shorter than minRenewCheck.
func TestCheckInterval(t *testing.T) {
	base := 10 * time.Minute
	for _, c := range []struct {
		base, shortest, want time.Duration
	}{
		{base, 0, base},                                     // nothing held
		{base, 90 * 24 * time.Hour, base},                   // capped by the configured interval
		{base, 6 * 24 * time.Hour, base},                    // shortlived: 14.4 h / 10 is above 10 min
		{base, 60 * time.Minute, 6 * time.Minute},           // a tenth
		{base, 119 * time.Second, 11900 * time.Millisecond}, // issue 12's certificates
		{base, 5 * time.Second, minRenewCheck},              // floor
		{250 * time.Millisecond, 5 * time.Second, 250 * time.Millisecond},
	} {
		if got := checkInterval(c.base, c.shortest); got != c.want {
			t.Errorf("checkInterval(%v, %v) = %v, want %v", c.base, c.shortest, got, c.want)
		}
	}
}

// The scheduler wakes at the next due time, within one check interval,
// and at most ten times an interval.
func TestNextWake(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	iv := 10 * time.Minute
	ms := 10 * time.Millisecond
	for _, c := range []struct {
		next time.Time
		want time.Time
	}{
		{time.Time{}, t0.Add(iv)},                             // nothing due: one interval
		{t0.Add(time.Hour), t0.Add(iv)},                       // due later: one interval
		{t0.Add(5 * time.Minute), t0.Add(5*time.Minute + ms)}, // due first: just past it
		{t0.Add(time.Second), t0.Add(iv / 10)},                // not sooner than a tenth of the interval
	} {
		if got := nextWake(t0, c.next, iv); !got.Equal(c.want) {
			t.Errorf("nextWake(next %s) = %s, want %s", c.next, got, c.want)
		}
	}
}
