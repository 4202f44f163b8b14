package tlsconfig

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

// The record check reads an issue-value the way the CA does (Pebble's
// parseDNSPersistIssueValues): issuer first, tags case-insensitive,
// whitespace around parameters, the wildcard policy only for wildcards.
func TestPersistMatches(t *testing.T) {
	const acct = "https://ca.example/acct/1"
	issuers := []string{"ca.example", "other-ca.example"}
	for _, c := range []struct {
		v        string
		wildcard bool
		want     bool
	}{
		{"ca.example; accounturi=" + acct, false, true},
		{"other-ca.example;accounturi=" + acct, false, true},
		{"ca.example; AccountURI=" + acct + "; policy=wildcard", true, true},
		{"ca.example; accounturi=" + acct + "; Policy=WILDCARD", true, true},
		{"ca.example; accounturi=" + acct + "; policy=wildcard", false, true},
		{"ca.example; accounturi=" + acct, true, false},                    // wildcard needs the policy
		{"ca.example; accounturi=https://ca.example/acct/2", false, false}, // another account
		{"evil.example; accounturi=" + acct, false, false},                 // another CA
		{"ca.example; accounturi", false, false},                           // malformed
		{"ca.example", false, false},
	} {
		if got := persistMatches(c.v, issuers, acct, c.wildcard); got != c.want {
			t.Errorf("persistMatches(%q, wildcard=%v) = %v, want %v", c.v, c.wildcard, got, c.want)
		}
	}
	rec := persistRecordFor("*.example.com", "ca.example", acct)
	if rec.Name != "_validation-persist.example.com" || rec.Value != "ca.example; accounturi="+acct+"; policy=wildcard" ||
		!persistMatches(rec.Value, issuers, acct, true) {
		t.Errorf("record %+v", rec)
	}
	if got := CAARecord("*.example.com", "ca.example", acct, []string{"dns-01"}); got != `example.com. CAA 0 issuewild "ca.example; accounturi=`+acct+`; validationmethods=dns-01"` {
		t.Errorf("CAARecord = %s", got)
	}
}

// The CA's directory goes into a DNS record: only plain domain names
// are taken from meta.caaIdentities, at most 8, from at most 1 MiB.
func TestCAAIdentitiesHostile(t *testing.T) {
	ids := []string{`evil.example"; accounturi=x`, "ok.example", "*.wild.example", "has space.example"}
	for i := range 20 {
		ids = append(ids, fmt.Sprintf("ca%d.example", i))
	}
	body, _ := json.Marshal(map[string]any{"meta": map[string]any{"caaIdentities": ids}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			w.Write([]byte(`{"meta": {"caaIdentities": ["a.example"], "pad": "`))
			w.Write(bytes.Repeat([]byte("x"), 2<<20))
			w.Write([]byte(`"}}`))
			return
		}
		w.Write(body)
	}))
	defer srv.Close()
	got, err := caaIdentities(context.Background(), srv.URL+"/dir", "")
	if err != nil || len(got) != 8 || got[0] != "ok.example" || got[1] != "ca0.example" {
		t.Errorf("caaIdentities = %v, %v", got, err)
	}
	if _, err := caaIdentities(context.Background(), srv.URL+"/big", ""); err == nil {
		t.Error("a directory over 1 MiB was read")
	}
}
