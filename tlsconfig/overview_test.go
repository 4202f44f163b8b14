package tlsconfig

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/routes"
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

// The status page's rows and failures are bounded by limit; the rest is
// counted (More), and the failures come newest first.
func TestOverviewLimit(t *testing.T) {
	const n, limit = 30, 10
	cfg, fst, names, _, _ := plantedNames(t, n, "n%02d.overview.test")
	m, err := New(cfg, Options{Logger: quietLogger(t), Storage: fst})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Apply(routes.NewTable(cfg)); err != nil {
		t.Fatal(err)
	}
	// the background walk settles every name first (it would clear
	// the failures recorded below)
	waitFor(t, 30*time.Second, "every stored name checked", func() error {
		if total, waiting, _, _ := m.Readiness(0); total != n || waiting != 0 || m.StoredUnchecked() != 0 {
			return fmt.Errorf("%d names, %d waiting, %d unchecked", total, waiting, m.StoredUnchecked())
		}
		return nil
	})
	for i, name := range names[:limit+5] {
		m.status.fail(name, errTest(fmt.Sprintf("failure %d", i)))
		time.Sleep(time.Millisecond) // distinct FailedAt
	}
	ov := m.Overview(context.Background(), limit)
	if ov.InventoryError != "" {
		t.Fatal(ov.InventoryError)
	}
	if len(ov.Certificates) != limit || ov.More != n-limit {
		t.Fatalf("%d rows, %d more; want %d and %d", len(ov.Certificates), ov.More, limit, n-limit)
	}
	if c := ov.Certificates[0]; c.Name != names[0] || c.NotAfter.IsZero() || c.State != "ok" || c.LastError != "failure 0" {
		t.Errorf("first row: %+v", c)
	}
	if len(ov.Failures) != limit || ov.Failures[0].LastError != fmt.Sprintf("failure %d", limit+4) {
		t.Errorf("%d failures, newest %+v", len(ov.Failures), ov.Failures[0])
	}
	if ov.Names != n {
		t.Errorf("names %d, want %d", ov.Names, n)
	}
}
