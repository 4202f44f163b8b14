package routes

import (
	"strings"
	"testing"
)

// loadErrs loads content from a file and returns its error text.
func loadErrs(t *testing.T, content string) (string, string) {
	t.Helper()
	p := writeFile(t, "g.toml", content)
	_, err := Load(p)
	if err == nil {
		t.Fatalf("no error for:\n%s", content)
	}
	return p, err.Error()
}

// [[routes]] (plural): one error per header line, naming the table and
// the one meant; not the keys inside it, not twice, and not "no [[route]]
// defined" as well.
func TestPluralRoutesTable(t *testing.T) {
	p, msg := loadErrs(t, `[acme]
email = "a@b.example"
[[routes]]
hosts = ["a.example"]
upstream = "http://127.0.0.1:8080"
[[routes]]
hosts = ["b.example"]
upstream = "http://127.0.0.1:8081"
`)
	want := p + ":3: unknown table [[routes]] (did you mean [[route]]?)\n" +
		p + ":6: unknown table [[routes]] (did you mean [[route]]?)"
	if msg != want {
		t.Errorf("got:\n%s\nwant:\n%s", msg, want)
	}
	_, msg = loadErrs(t, "[listn]\nhttps = \":443\"\n[[route]]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:1\"\ntls = \"internal\"\n")
	if !strings.HasSuffix(msg, `:1: unknown table [listn] (did you mean [listen]?)`) || strings.Count(msg, "\n") != 0 {
		t.Errorf("got:\n%s", msg)
	}
}

// A value of the wrong type: file:line and the line to write instead,
// not the decoder's words about Go types; the rest of the file is still
// checked in the same pass.
func TestWrongTypesSayWhatToWrite(t *testing.T) {
	cases := []struct {
		name, toml string
		want       []string
	}{
		{"hosts as a string", "[acme]\nemail = \"a@b.example\"\n[[route]]\nhosts = \"a.example\"\nupstream = \"http://127.0.0.1:1\"\n",
			[]string{`:4: route #1: hosts = "a.example" must be a list, even of one: write hosts = ["a.example"]`}},
		{"hosts, comma separated", "[acme]\nemail = \"a@b.example\"\n[[route]]\nhosts = \"a.example, b.example\"\nupstream = \"http://127.0.0.1:1\"\n",
			[]string{`:4: route #1: hosts = "a.example, b.example" must be a list, even of one: write hosts = ["a.example", "b.example"]`}},
		{"duration without unit", "[timeouts]\nhandshake = \"10\"\n[[route]]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:1\"\ntls = \"internal\"\n",
			[]string{`:2: [timeouts] handshake = "10" has no unit: write handshake = "10s"`}},
		{"duration as a number", "[timeouts]\nidle = 30\n[[route]]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:1\"\ntls = \"internal\"\n",
			[]string{`:2: [timeouts] idle = 30 is not a duration: write idle = "30s"`}},
		{"duration nonsense", "[[route]]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:1\"\ntls = \"internal\"\nhealth_interval = \"often\"\n",
			[]string{`:5: route #1: health_interval = "often" is not a duration: write it like health_interval = "30s"`}},
		{"bool in quotes", "[acme]\nemail = \"a@b.example\"\nself_check = \"false\"\n[[route]]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:1\"\n",
			[]string{`:3: [acme] self_check = "false" must be true or false without quotes: write self_check = false`}},
		{"number in quotes", "[acme]\nemail = \"a@b.example\"\nhttp_challenge_port = \"8080\"\n[[route]]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:1\"\n",
			[]string{`:3: [acme] http_challenge_port = "8080" must be a number without quotes: write http_challenge_port = 8080`}},
		{"string unquoted", "[listen]\nhttps = 443\n[[route]]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:1\"\ntls = \"internal\"\n",
			[]string{`:2: [listen] https = 443 must be a string in quotes: write https = "443"`}},
		{"single brackets", "[route]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:1\"\ntls = \"internal\"\n",
			[]string{`:1: [route] takes double brackets: write [[route]] (one per route)`}},
		{"table as a value", "listen = \":443\"\n[[route]]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:1\"\ntls = \"internal\"\n",
			[]string{`:1: listen must be a table: write [listen] on a line of its own`}},
		{"and the rest is still checked", "[timeouts]\nhandshake = \"10\"\n[[route]]\nhosts = \"a.example\"\nupstream = \"ftp://x\"\ntls = \"internal\"\n",
			[]string{`:2: [timeouts] handshake = "10" has no unit`, `:4: route #1: hosts = "a.example" must be a list`, `:5: route #1: upstream "ftp://x"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, msg := loadErrs(t, c.toml)
			lines := strings.Split(msg, "\n")
			if len(lines) != len(c.want) {
				t.Errorf("%d errors, want %d:\n%s", len(lines), len(c.want), msg)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, p+w) {
					t.Errorf("lacks %q:\n%s", p+w, msg)
				}
			}
			for _, raw := range []string{"incompatible types", "destination has type", "(last key", "time: "} {
				if strings.Contains(msg, raw) {
					t.Errorf("decoder's words %q in:\n%s", raw, msg)
				}
			}
		})
	}
}

// What the messages say to write is accepted: hosts = ["a.example"] and
// handshake = "10s" load.
func TestWrongTypesFixesLoad(t *testing.T) {
	p := writeFile(t, "g.toml", "[timeouts]\nhandshake = \"10s\"\nidle = \"30s\"\nshutdown_drain = 0\n[[route]]\nhosts = [\"a.example\", \"b.example\"]\nupstream = \"http://127.0.0.1:1\"\ntls = \"internal\"\n")
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Routes[0].Hosts; len(got) != 2 || got[1] != "b.example" {
		t.Errorf("hosts %v", got)
	}
}
