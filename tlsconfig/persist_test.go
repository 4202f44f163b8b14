package tlsconfig

import "testing"

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
