package routes

import (
	"strings"
	"testing"
)

// [ech] public_name must be an exact name a terminating route serves:
// a client whose keys are stale is answered under that name's
// certificate. Each mistake is reported on its line.
func TestECHValidation(t *testing.T) {
	const routesTOML = `
[[route]]
hosts = ["a.example", "*.w.example"]
upstream = "http://127.0.0.1:1"
tls = "internal"

[[route]]
hosts = ["pass.example"]
mode = "passthrough"
upstream = "127.0.0.1:2"
`
	for _, tc := range []struct{ ech, want string }{
		{`public_name = "a.example"`, ""},
		{`public_name = "nowhere.example"`, `line 3: public_name = "nowhere.example" is in no route's hosts`},
		{`public_name = "pass.example"`, `line 3: public_name = "pass.example" belongs to a passthrough route`},
		{`public_name = "*.w.example"`, `line 3: public_name = "*.w.example": want one exact host name`},
		{`public_name = "A.example"`, `line 3: public_name = "A.example": write it as "a.example"`},
		{"public_name = \"a.example\"\nrotate = \"10m\"", `line 4: rotate = 10m0s: want 1h or more`},
	} {
		cfg, err := Parse([]byte("\n[ech]\n" + tc.ech + "\n" + routesTOML))
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.ech, err)
			} else if !cfg.ECH.Enabled() {
				t.Errorf("%s: ECH not enabled", tc.ech)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.ech, err, tc.want)
		}
	}
}

// An [ech] table without public_name turns ECH on with the first exact
// name of the first route gatehouse terminates; with none, it says so.
func TestECHDefaultPublicName(t *testing.T) {
	cfg, err := Parse([]byte(`
[ech]
rotate = "24h"

[[route]]
hosts = ["pass.example"]
mode = "passthrough"
upstream = "127.0.0.1:2"

[[route]]
hosts = ["*.w.example", "b.example", "c.example"]
upstream = "http://127.0.0.1:1"
tls = "internal"
`))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.ECH.Enabled() || cfg.ECH.PublicName != "b.example" {
		t.Fatalf("ECH on=%v public name %q, want b.example", cfg.ECH.Enabled(), cfg.ECH.PublicName)
	}
	_, err = Parse([]byte("[ech]\n\n[[route]]\nhosts = [\"pass.example\"]\nmode = \"passthrough\"\nupstream = \"127.0.0.1:2\"\n"))
	if err == nil || !strings.Contains(err.Error(), "[ech] needs a public name") {
		t.Fatalf("[ech] with only passthrough routes: %v", err)
	}
	cfg, err = Parse([]byte("[[route]]\nhosts = [\"b.example\"]\nupstream = \"http://127.0.0.1:1\"\ntls = \"internal\"\n"))
	if err != nil || cfg.ECH.Enabled() {
		t.Fatalf("no [ech] table: ECH on=%v err=%v", cfg != nil && cfg.ECH.Enabled(), err)
	}
}
