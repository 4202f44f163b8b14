package routes

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

const storageRoute = `
[acme]
email = "ops@example.com"
[[route]]
hosts = ["a.example"]
upstream = "http://127.0.0.1:1"
`

// The endpoint spellings users copy from etcd's flags, Kubernetes
// manifests and etcdctl all load, and come out as the client takes them.
func TestEtcdStorageValid(t *testing.T) {
	p := writeFile(t, "g.toml", `
[storage]
backend   = "etcd"
endpoints = ["http://etcd:2379", "127.0.0.1:2379", "http://[::1]:2379/", "etcd-2.etcd.svc:2379"]
prefix    = "gatehouse/"
lock_ttl  = "10s"
sync_interval = "30s"
health_interval = "5s"
`+storageRoute)
	cfg, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Storage
	if s.Backend != "etcd" || time.Duration(s.LockTTL) != 10*time.Second ||
		time.Duration(s.SyncInterval) != 30*time.Second || time.Duration(s.HealthInterval) != 5*time.Second {
		t.Errorf("storage = %+v", s)
	}
	var got []string
	for _, ep := range s.Endpoints {
		n, err := EtcdEndpoint(ep)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
	}
	if want := "http://etcd:2379 127.0.0.1:2379 http://[::1]:2379 etcd-2.etcd.svc:2379"; strings.Join(got, " ") != want {
		t.Errorf("endpoints = %q, want %q", got, want)
	}
}

// Every [storage] mistake is reported on its own line with what to write.
func TestEtcdStorageErrors(t *testing.T) {
	cases := []struct {
		storage string
		line    int // of the [storage] key, counting from the file's first line
		want    string
	}{
		{"backend = \"etcd\"", 1, "needs endpoints"}, // missing key: the [storage] line
		{"backend = \"etcd\"\nendpoints = [\"etcd\"]", 3, `endpoint "etcd": no port`},
		{"backend = \"etcd\"\nendpoints = [\"etcd:http\"]", 3, "is not a number"},
		{"backend = \"etcd\"\nendpoints = [\"unix:///run/etcd.sock\"]", 3, "want http://host:port"},
		{"backend = \"etcd\"\nendpoints = [\"http://etcd:2379/gatehouse\"]", 3, "the key prefix goes in prefix"},
		{"backend = \"etcd\"\nendpoints = [\"http://u:p@etcd:2379\"]", 3, "credentials in username/password"},
		{"backend = \"etcd\"\nendpoints = [\"http://:2379\"]", 3, "no host"},
		{"backend = \"etcd\"\nendpoints = [\"http://etcd:2379\"]\nca_cert = \"/nonexistent/ca.pem\"", 3, "plain http but ca_cert/cert/key are set"},
		{"backend = \"etcd\"\nendpoints = [\"https://etcd:2379\"]\nca_cert = \"/nonexistent/ca.pem\"", 4, `cannot read "/nonexistent/ca.pem"`},
		{"backend = \"etcd\"\nendpoints = [\"https://etcd:2379\"]\ncert = \"/nonexistent/c.pem\"", 4, "cert and key (the etcd client certificate) go together"},
		{"backend = \"etcd\"\nendpoints = [\"https://etcd:2379\"]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"", 4, "cannot load etcd client cert"},
		{"backend = \"etcd\"\nendpoints = [\"etcd:2379\"]\nusername = \"gh\"", 4, `username "gh" has no password`},
		{"backend = \"etcd\"\nendpoints = [\"etcd:2379\"]\npassword = \"x\"", 4, "password is set without username"},
		{"backend = \"etcd\"\nendpoints = [\"etcd:2379\"]\nlock_ttl = \"500ms\"", 4, "shortest etcd lease is 2s"},
		{"endpoints = [\"etcd:2379\"]", 2, `endpoints is an etcd setting but backend is "file": add backend = "etcd"`},
		{"dir = \"/tmp/x\"\nsync_interval = \"10ms\"", 3, "sync_interval = \"10ms\": want at least 1s"},
		{"dir = \"/tmp/x\"\nhealth_interval = \"0.5s\"", 3, "health_interval = \"500ms\": want at least 1s"},
		{"backend = \"consul\"", 2, `backend = "consul": want "file" or "etcd"`},
	}
	for _, c := range cases {
		p := writeFile(t, "g.toml", "[storage]\n"+c.storage+"\n"+storageRoute)
		_, err := Load(p)
		var es Errors
		if !errors.As(err, &es) {
			t.Errorf("%q: err = %v, want a validation error", c.storage, err)
			continue
		}
		found := false
		for _, e := range es {
			if strings.Contains(e.Msg, c.want) {
				found = true
				if e.Line != c.line {
					t.Errorf("%q: %q reported on line %d, want %d", c.storage, c.want, e.Line, c.line)
				}
			}
		}
		if !found {
			t.Errorf("%q: errors %v, want one containing %q", c.storage, err, c.want)
		}
	}
}

func TestEtcdEndpointKeepsWhatUsersWrite(t *testing.T) {
	for in, want := range map[string]string{
		"http://etcd:2379":      "http://etcd:2379",
		"https://10.0.0.1:2379": "https://10.0.0.1:2379",
		"http://etcd:2379/":     "http://etcd:2379",
		"10.0.0.1:2379":         "10.0.0.1:2379",
		"[::1]:2379":            "[::1]:2379",
	} {
		got, err := EtcdEndpoint(in)
		if err != nil || got != want {
			t.Errorf("EtcdEndpoint(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "etcd", ":2379", "http://etcd", "ftp://etcd:2379", "etcd:0", "etcd:70000"} {
		if got, err := EtcdEndpoint(in); err == nil {
			t.Errorf("EtcdEndpoint(%q) = %q, want an error", in, got)
		} else if !strings.Contains(err.Error(), fmt.Sprintf("%q", in)) {
			t.Errorf("EtcdEndpoint(%q): error %q does not quote the endpoint", in, err)
		}
	}
}
