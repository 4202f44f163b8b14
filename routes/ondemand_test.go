package routes

import (
	"strings"
	"testing"
	"time"
)

func TestOnDemandKeys(t *testing.T) {
	cfg, err := Parse([]byte(`
[acme]
email = "a@b.c"
[on_demand]
ask = "http://127.0.0.1:9/check"
ask_timeout = "2s"
rate = "3/30s"
max_concurrent = 2
deny_cache = "10s"
[[route]]
hosts = ["*"]
upstream = "http://127.0.0.1:1"
`))
	if err != nil {
		t.Fatal(err)
	}
	n, per, err := cfg.OnDemand.ParseRate()
	if err != nil || n != 3 || per != 30*time.Second {
		t.Errorf("rate = %d/%s, %v; want 3/30s", n, per, err)
	}
	if cfg.OnDemand.MaxConcurrent != 2 || cfg.OnDemand.AskTimeout.Or(0) != 2*time.Second || cfg.OnDemand.DenyCache.Or(0) != 10*time.Second {
		t.Errorf("on_demand = %+v", cfg.OnDemand)
	}

	// defaults
	n, per, err = OnDemand{}.ParseRate()
	if err != nil || n != 10 || per != time.Minute {
		t.Errorf("default rate = %d/%s, %v; want 10/1m", n, per, err)
	}
	if n, per, _ := (OnDemand{Rate: "5/h"}).ParseRate(); n != 5 || per != time.Hour {
		t.Errorf("5/h = %d/%s", n, per)
	}
}

func TestOnDemandBadKeys(t *testing.T) {
	_, err := Parse([]byte(`
[acme]
email = "a@b.c"
[on_demand]
ask = "http://127.0.0.1:9/check"
rate = "lots"
max_concurrent = -1
ask_timeout = "5m"
[[route]]
hosts = ["*"]
upstream = "http://127.0.0.1:1"
`))
	if err == nil {
		t.Fatal("bad [on_demand] accepted")
	}
	for _, want := range []string{`line 6: rate = "lots"`, "line 7: max_concurrent = -1", "line 8: ask_timeout = 5m0s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	for _, bad := range []string{"0/1m", "5/0s", "5/soon"} {
		if _, _, err := (OnDemand{Rate: bad}).ParseRate(); err == nil {
			t.Errorf("rate %q accepted", bad)
		}
	}
}
