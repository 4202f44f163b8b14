package routes

import (
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// validate checks [acme.dns] without the network: a provider that
// cannot work is refused at `gatehouse validate`, not at the first
// order (which would count against the CA's failed-validation limit).
// Without dns-01 (dns-persist-01 alone), the table may hold only server
// (and zone): where the persistent records are looked up.
func (d *DNSProvider) validate(bad func(string, string, ...any), dns01 bool) {
	const t = "acme.dns"
	switch d.Provider {
	case "rfc2136":
		if d.Server == "" {
			bad(t+".server", "[acme.dns] provider = \"rfc2136\" needs server = \"ns1.example.com:53\": the primary server that takes the updates")
		} else if host, port, err := net.SplitHostPort(d.ServerAddr()); err != nil || host == "" || !validPort(port) {
			bad(t+".server", "[acme.dns] server = %q: want host:port, like \"ns1.example.com:53\"", d.Server)
		}
		if d.TSIGKey == "" {
			bad(t+".tsig_key", "[acme.dns] provider = \"rfc2136\" needs tsig_key, the TSIG key name (as in the server's key \"NAME\" { ... } statement)")
		} else if _, ok := dnsName(d.TSIGKey); !ok {
			bad(t+".tsig_key", "[acme.dns] tsig_key = %q is not a DNS name like \"gatehouse.\"", d.TSIGKey)
		}
		if d.TSIGSecret == "" {
			bad(t+".tsig_secret", "[acme.dns] provider = \"rfc2136\" needs tsig_secret, the key's base64 secret (`tsig-keygen` prints it; or set %s)", EnvDNSTSIGSecret)
		} else if b, err := base64.StdEncoding.DecodeString(d.TSIGSecret); err != nil || len(b) == 0 {
			bad(t+".tsig_secret", "[acme.dns] tsig_secret is not valid base64 (copy the secret \"...\" value of the key statement exactly)")
		}
		if a := d.TSIGAlgorithm; a != "" && !slices.Contains(TSIGAlgorithms, strings.TrimSuffix(strings.ToLower(a), ".")) {
			bad(t+".tsig_algorithm", "[acme.dns] tsig_algorithm = %q: want one of %s (default %s)", a, strings.Join(TSIGAlgorithms, ", "), DefaultTSIGAlgorithm)
		}
		if len(d.Command) > 0 {
			bad(t+".command", "[acme.dns] command is for provider = \"exec\"; provider = \"rfc2136\" sends updates itself")
		}
	case "exec":
		if len(d.Command) == 0 || d.Command[0] == "" {
			bad(t+".command", "[acme.dns] provider = \"exec\" needs command = [\"/path/to/hook\"], run as COMMAND present|cleanup FQDN VALUE")
		} else if err := checkExecutable(d.Command[0]); err != nil {
			bad(t+".command", "[acme.dns] command %q: %v", d.Command[0], err)
		}
		if d.TSIGKey != "" || d.TSIGSecret != "" || d.TSIGAlgorithm != "" {
			bad(t+".tsig_key", "[acme.dns] tsig_key, tsig_secret and tsig_algorithm are for provider = \"rfc2136\"; an exec hook holds its own credentials")
		}
		if d.Server != "" {
			if host, port, err := net.SplitHostPort(d.ServerAddr()); err != nil || host == "" || !validPort(port) {
				bad(t+".server", "[acme.dns] server = %q: want host:port, like \"ns1.example.com:53\"", d.Server)
			}
		}
	case "":
		if dns01 || d.TSIGKey != "" || d.TSIGSecret != "" || len(d.Command) > 0 {
			bad(t, "[acme.dns] has no provider: set provider = \"rfc2136\" or \"exec\"")
		} else if d.Server != "" {
			if host, port, err := net.SplitHostPort(d.ServerAddr()); err != nil || host == "" || !validPort(port) {
				bad(t+".server", "[acme.dns] server = %q: want host:port, like \"ns1.example.com:53\"", d.Server)
			}
		}
	default:
		bad(t+".provider", "[acme.dns] provider = %q: want \"rfc2136\" or \"exec\"", d.Provider)
	}
	if d.Zone != "" {
		if _, ok := dnsName(d.Zone); !ok {
			bad(t+".zone", "[acme.dns] zone = %q is not a DNS name like \"example.com.\"", d.Zone)
		}
	}
}

func validPort(p string) bool {
	n := 0
	for _, ch := range p {
		if ch < '0' || ch > '9' {
			return false
		}
		n = n*10 + int(ch-'0')
		if n > 65535 {
			return false
		}
	}
	return p != "" && n > 0
}

// dnsName checks a name in DNS syntax (trailing dot optional) and
// returns it lower case without the dot.
func dnsName(s string) (string, bool) {
	s = strings.ToLower(strings.TrimSuffix(s, "."))
	if s == "" || len(s) > 253 {
		return "", false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return "", false
		}
		for _, ch := range label {
			if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
				return "", false
			}
		}
	}
	return s, true
}

// checkExecutable reports why path cannot be run as a hook.
func checkExecutable(path string) error {
	if !strings.Contains(path, "/") {
		if _, err := exec.LookPath(path); err != nil {
			return fmt.Errorf("not found in PATH (%s): give the absolute path", os.Getenv("PATH"))
		}
		return nil
	}
	st, err := os.Stat(path)
	switch {
	case err != nil:
		return fmt.Errorf("cannot be run: %v", err)
	case st.IsDir():
		return fmt.Errorf("is a directory, not a program")
	case st.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("is not executable (chmod +x %s)", filepath.Clean(path))
	}
	return nil
}
