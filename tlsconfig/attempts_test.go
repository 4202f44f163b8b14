package tlsconfig

import (
	"context"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// The wait between failed orders grows and stops growing at 6 hours.
func TestOrderBackoffGrowsBounded(t *testing.T) {
	prev := time.Duration(0)
	for n := 1; n <= 100; n++ {
		d := orderBackoff(n)
		if d < prev {
			t.Fatalf("failure %d: wait %v shorter than %v before", n, d, prev)
		}
		if d > 6*time.Hour {
			t.Fatalf("failure %d: wait %v over 6h", n, d)
		}
		prev = d
	}
	if orderBackoff(1) != time.Minute || orderBackoff(100) != 6*time.Hour {
		t.Errorf("first wait %v, last %v; want 1m and 6h", orderBackoff(1), orderBackoff(100))
	}
}

// Records survive a new process (a new attempts over the same storage)
// and are gone once cleared.
func TestAttemptRecordsPersist(t *testing.T) {
	ctx := context.Background()
	s := &certmagic.FileStorage{Path: t.TempDir()}
	a := newAttempts(s)
	next := time.Now().Add(time.Minute).Truncate(time.Second)
	if err := a.put(ctx, Attempt{Name: "a.test", Failures: 2, NextOrder: next, Stage: "order", LastError: "boom"}); err != nil {
		t.Fatal(err)
	}
	got, err := newAttempts(s).get(ctx, "a.test")
	if err != nil || got.Failures != 2 || !got.NextOrder.Equal(next) || got.LastError != "boom" {
		t.Fatalf("reloaded %+v, %v", got, err)
	}
	if err := a.clear(ctx, "a.test"); err != nil {
		t.Fatal(err)
	}
	if rec, err := LoadAttempt(ctx, s, "a.test"); rec != nil || err != nil {
		t.Errorf("after clear: %+v, %v", rec, err)
	}
}
