package tlsconfig

import (
	"testing"
	"time"
)

// An order attempt counts as running from cert_obtaining to its end,
// and no longer than orderStale (a lost event must not hide an
// expiring certificate from the alert).
func TestOrderingTracked(t *testing.T) {
	b := newStatusBook()
	b.orderStarted("a.example")
	b.orderStarted("b.example")
	now := time.Now()
	if got := b.orderingNow(now); len(got) != 2 {
		t.Fatalf("running: %v", got)
	}
	b.orderDone("a.example")
	if _, ok := b.orderingNow(now)["a.example"]; ok {
		t.Error("a.example still running after its end")
	}
	if _, ok := b.orderingNow(now.Add(orderStale + time.Second))["b.example"]; ok {
		t.Error("an attempt older than orderStale still counts")
	}
	if len(b.ordering) != 0 {
		t.Errorf("stale entries kept: %v", b.ordering)
	}
	b.orderStarted("") // events without an identifier are ignored
	if len(b.ordering) != 0 {
		t.Error("empty name recorded")
	}
}

// A failure is stamped, and a certificate clears it.
func TestFailedAtStamped(t *testing.T) {
	b := newStatusBook()
	b.set("a.example", "acme", stateWaiting, errTest("order failed"))
	st := b.names["a.example"]
	if st.FailedAt.IsZero() || st.LastError != "order failed" {
		t.Fatalf("%+v", st)
	}
	b.set("a.example", "acme", stateReady, nil)
	if !st.FailedAt.IsZero() || st.LastError != "" {
		t.Errorf("after success: %+v", st)
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }
