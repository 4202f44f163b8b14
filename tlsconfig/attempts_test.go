package tlsconfig

import (
	"context"
	"log/slog"
	"strings"
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

// An order whose process died mid-way may be taken over at once once
// (a replica finishing its dead peer's order); a second unfinished one
// in a row holds the next order back like a failure.
func TestUnfinishedOrdersPaced(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := fileConfig(t, dir)
	// each Manager is a new process over the same storage; none is
	// Applied, so none orders by itself
	process := func() *Manager {
		m, err := New(cfg, Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
		m.status.set("a.test", "acme", stateWaiting, nil)
		return m
	}
	if err := process().beforeOrder(ctx, "a.test"); err != nil {
		t.Fatalf("first order: %v", err)
	}
	// that process died mid-order
	if err := process().beforeOrder(ctx, "a.test"); err != nil {
		t.Fatalf("taking over an unfinished order: %v", err)
	}
	// and so did this one
	err := process().beforeOrder(ctx, "a.test")
	if err == nil || !strings.Contains(err.Error(), "2 unfinished order(s) in a row") {
		t.Fatalf("third start: %v, want the order held after 2 unfinished ones", err)
	}
	rec, _ := LoadAttempt(ctx, &certmagic.FileStorage{Path: dir}, "a.test")
	if rec == nil || rec.Unfinished != 2 || rec.NextOrder.Sub(rec.LastOrder) != time.Minute {
		t.Errorf("record %+v: want 2 unfinished, next order 1 min after the last", rec)
	}
}
