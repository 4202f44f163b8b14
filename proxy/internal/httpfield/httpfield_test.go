package httpfield

import (
	"net/http"
	"testing"
	"time"
)

// TestDateIsNow: the cached Date value is the current second, also
// across a second's end (the cache's end is taken from the monotonic
// clock).
func TestDateIsNow(t *testing.T) {
	end := time.Now().Add(2500 * time.Millisecond)
	seen := map[string]bool{}
	for time.Now().Before(end) {
		before := time.Now().Truncate(time.Second)
		v := Date()
		after := time.Now()
		d, err := http.ParseTime(v)
		if err != nil {
			t.Fatalf("Date() = %q: %v", v, err)
		}
		if d.Before(before) || d.After(after) {
			t.Fatalf("Date() = %q, called between %v and %v", v, before.UTC(), after.UTC())
		}
		seen[v] = true
		time.Sleep(10 * time.Millisecond)
	}
	if len(seen) < 2 {
		t.Fatalf("2.5 s of calls gave %d distinct values, want a new one each second", len(seen))
	}
}
