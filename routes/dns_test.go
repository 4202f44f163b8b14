package routes

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dnsConfig is a config whose [acme.dns] table is dnsTable, starting on
// line 6 (so errors point at known lines), with a wildcard route.
func dnsConfig(challenges, dnsTable string) string {
	return `[acme]
email = "ops@example.com"
challenges = ` + challenges + `
[storage]
dir = "/tmp/x"
[acme.dns]
` + dnsTable + `
[[route]]
hosts = ["*.example.com", "example.com"]
upstream = "http://127.0.0.1:8080"
`
}

func TestDNSProviderValid(t *testing.T) {
	hook := filepath.Join(t.TempDir(), "hook")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, table := range map[string]string{
		"rfc2136": `provider = "rfc2136"
server = "ns1.example.com:53"
tsig_key = "gatehouse."
tsig_secret = "c2VjcmV0c2VjcmV0c2VjcmV0"
`,
		"rfc2136 no port, sha512, zone": `provider = "rfc2136"
server = "ns1.example.com"
tsig_key = "gatehouse"
tsig_secret = "c2VjcmV0c2VjcmV0c2VjcmV0"
tsig_algorithm = "hmac-sha512"
zone = "example.com."
`,
		"exec": `provider = "exec"
command = ["` + hook + `", "--verbose"]
`,
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := Parse([]byte(dnsConfig(`["dns-01"]`, table)))
			if err != nil {
				t.Fatal(err)
			}
			if !cfg.ACME.WildcardByDNS() || !cfg.ACME.DNSOnly() {
				t.Errorf("WildcardByDNS %v DNSOnly %v", cfg.ACME.WildcardByDNS(), cfg.ACME.DNSOnly())
			}
			if cfg.ACME.DNS.Server != "" && !strings.HasSuffix(cfg.ACME.DNS.ServerAddr(), ":53") {
				t.Errorf("ServerAddr = %q", cfg.ACME.DNS.ServerAddr())
			}
		})
	}
	cfg, err := Parse([]byte(dnsConfig(`["dns-01", "http-01"]`, "provider = \"exec\"\ncommand = [\""+hook+"\"]\n")))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.ACME.WildcardByDNS() || cfg.ACME.DNSOnly() {
		t.Errorf("dns-01 + http-01: WildcardByDNS %v DNSOnly %v", cfg.ACME.WildcardByDNS(), cfg.ACME.DNSOnly())
	}
}

// Each misconfigured provider is refused with the line to fix.
func TestDNSProviderErrors(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "hook.sh")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, challenges, table string
		line                    int
		want                    string
	}{
		{"missing tsig_key", `["dns-01"]`, "provider = \"rfc2136\"\nserver = \"127.0.0.1:53\"\ntsig_secret = \"c2VjcmV0\"\n", 6, "needs tsig_key"},
		{"missing tsig_secret", `["dns-01"]`, "provider = \"rfc2136\"\nserver = \"127.0.0.1:53\"\ntsig_key = \"k.\"\n", 6, "needs tsig_secret"},
		{"bad base64", `["dns-01"]`, "provider = \"rfc2136\"\nserver = \"127.0.0.1:53\"\ntsig_key = \"k.\"\ntsig_secret = \"not base64!\"\n", 10, "not valid base64"},
		{"unknown algorithm", `["dns-01"]`, "provider = \"rfc2136\"\nserver = \"127.0.0.1:53\"\ntsig_key = \"k.\"\ntsig_secret = \"c2VjcmV0\"\ntsig_algorithm = \"hmac-md4\"\n", 11, `tsig_algorithm = "hmac-md4"`},
		{"missing server", `["dns-01"]`, "provider = \"rfc2136\"\ntsig_key = \"k.\"\ntsig_secret = \"c2VjcmV0\"\n", 6, "needs server"},
		{"bad server port", `["dns-01"]`, "provider = \"rfc2136\"\nserver = \"127.0.0.1:99999\"\ntsig_key = \"k.\"\ntsig_secret = \"c2VjcmV0\"\n", 8, "want host:port"},
		{"unknown provider", `["dns-01"]`, "provider = \"route53\"\n", 7, `provider = "route53"`},
		{"no provider", `["dns-01"]`, "zone = \"example.com\"\n", 6, "has no provider"},
		{"exec not found", `["dns-01"]`, "provider = \"exec\"\ncommand = [\"" + filepath.Join(dir, "missing") + "\"]\n", 8, "cannot be run"},
		{"exec not executable", `["dns-01"]`, "provider = \"exec\"\ncommand = [\"" + notExec + "\"]\n", 8, "not executable"},
		{"exec not in PATH", `["dns-01"]`, "provider = \"exec\"\ncommand = [\"no-such-gatehouse-hook\"]\n", 8, "not found in PATH"},
		{"exec without command", `["dns-01"]`, "provider = \"exec\"\n", 6, "needs command"},
		{"tsig on exec", `["dns-01"]`, "provider = \"exec\"\ncommand = [\"/bin/true\"]\ntsig_key = \"k.\"\n", 9, "are for provider = \"rfc2136\""},
		{"unknown key", `["dns-01"]`, "provider = \"exec\"\ncommand = [\"/bin/true\"]\ntsig_secrte = \"x\"\n", 9, `did you mean "tsig_secret"`},
		{"wildcard without dns-01", `["http-01"]`, "provider = \"exec\"\ncommand = [\"/bin/true\"]\n", 11, "add \"dns-01\" to [acme] challenges"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "g.toml")
			if err := os.WriteFile(p, []byte(dnsConfig(c.challenges, c.table)), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Load(p)
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("Load = %v, want Errors", err)
			}
			for _, e := range es {
				if strings.Contains(e.Msg, c.want) {
					if e.Line != c.line {
						t.Errorf("%q on line %d, want %d", e.Msg, e.Line, c.line)
					}
					if !strings.HasPrefix(e.Error(), p+":") {
						t.Errorf("error %q does not start with the file", e.Error())
					}
					return
				}
			}
			t.Errorf("no error containing %q in:\n%v", c.want, err)
		})
	}
	// an IP address cannot be validated by DNS
	_, err := Parse([]byte(dnsConfig(`["dns-persist-01"]`, "") + "[[route]]\nhosts = [\"192.0.2.1\"]\nupstream = \"http://127.0.0.1:1\"\n"))
	if err == nil || !strings.Contains(err.Error(), "line 12: route #2: \"192.0.2.1\": a CA cannot validate an IP address by DNS") {
		t.Errorf("IP host with DNS challenges only: %v", err)
	}
	// dns-01 without [acme.dns]
	_, err = Parse([]byte("[acme]\nemail = \"a@b.c\"\nchallenges = [\"dns-01\"]\n[[route]]\nhosts = [\"a.example.com\"]\nupstream = \"http://127.0.0.1:1\"\n"))
	if err == nil || !strings.Contains(err.Error(), "line 3: challenge \"dns-01\" needs an [acme.dns] table") {
		t.Errorf("dns-01 without [acme.dns]: %v", err)
	}
}

func TestDNSTSIGSecretFromEnv(t *testing.T) {
	t.Setenv(EnvDNSTSIGSecret, "ZW52c2VjcmV0")
	cfg, err := Parse([]byte(dnsConfig(`["dns-01"]`, "provider = \"rfc2136\"\nserver = \"127.0.0.1:53\"\ntsig_key = \"k.\"\n")))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ACME.DNS.TSIGSecret != "ZW52c2VjcmV0" {
		t.Errorf("tsig_secret = %q", cfg.ACME.DNS.TSIGSecret)
	}
}

// dns-persist-01 needs no provider: the operator creates the record;
// [acme.dns] may say where to look it up.
func TestDNSPersistConfig(t *testing.T) {
	for name, table := range map[string]string{
		"server only": "server = \"ns1.example.com\"\n",
		"empty":       "",
	} {
		cfg, err := Parse([]byte(dnsConfig(`["dns-persist-01"]`, table)))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !cfg.ACME.WildcardByDNS() || !cfg.ACME.DNSOnly() {
			t.Errorf("%s: WildcardByDNS %v DNSOnly %v", name, cfg.ACME.WildcardByDNS(), cfg.ACME.DNSOnly())
		}
	}
	_, err := Parse([]byte(dnsConfig(`["dns-persist-01", "dns-01"]`, "server = \"ns1.example.com\"\n")))
	if err == nil || !strings.Contains(err.Error(), "line 6: [acme.dns] has no provider") {
		t.Errorf("dns-01 without a provider: %v", err)
	}
	_, err = Parse([]byte(dnsConfig(`["dns-persist-01"]`, "server = \"ns1.example.com:0\"\n")))
	if err == nil || !strings.Contains(err.Error(), "line 7: [acme.dns] server") {
		t.Errorf("bad server: %v", err)
	}
}
