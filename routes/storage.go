package routes

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// MinLockTTL is the shortest lock_ttl accepted: etcd's smallest lease TTL
// with default election settings.
const MinLockTTL = 2 * time.Second

// EtcdEndpoint checks one [storage] endpoints entry and returns it in the
// form the etcd client takes. Both spellings are accepted: a URL
// ("http://etcd:2379", "https://10.0.0.1:2379", as Kubernetes manifests
// and etcd's own --advertise-client-urls write them) and a bare
// "host:port" (plaintext, or TLS when ca_cert/cert are set).
func EtcdEndpoint(ep string) (string, error) {
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil {
			return "", fmt.Errorf("endpoint %q is not a URL: %v", ep, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return "", fmt.Errorf("endpoint %q: want http://host:port, https://host:port or host:port", ep)
		}
		if u.User != nil {
			return "", fmt.Errorf("endpoint %q: put credentials in username/password, not in the URL", ep)
		}
		if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "" {
			return "", fmt.Errorf("endpoint %q: only scheme://host:port is allowed (the key prefix goes in prefix)", ep)
		}
		if err := checkHostPort(u.Host); err != nil {
			return "", fmt.Errorf("endpoint %q: %v", ep, err)
		}
		return u.Scheme + "://" + u.Host, nil
	}
	if err := checkHostPort(ep); err != nil {
		return "", fmt.Errorf("endpoint %q: %v (want host:port like \"127.0.0.1:2379\" or a URL like \"http://etcd:2379\")", ep, err)
	}
	return ep, nil
}

func checkHostPort(hp string) error {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return fmt.Errorf("no port")
	}
	if host == "" {
		return fmt.Errorf("no host")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return nil
}

// checkEtcd validates [storage] for backend = "etcd": everything the
// client would otherwise only report at start-up, or worse, at the first
// certificate operation.
func (s *Storage) checkEtcd(bad func(string, string, ...any)) {
	if len(s.Endpoints) == 0 {
		bad("storage.endpoints", "[storage] backend = \"etcd\" needs endpoints = [\"http://127.0.0.1:2379\"] (URLs or host:port)")
	}
	tlsFiles := s.CACert != "" || s.Cert != "" || s.Key != ""
	for _, ep := range s.Endpoints {
		if _, err := EtcdEndpoint(ep); err != nil {
			bad("storage.endpoints", "%v", err)
			continue
		}
		if tlsFiles && strings.HasPrefix(ep, "http://") {
			bad("storage.endpoints", "endpoint %q is plain http but ca_cert/cert/key are set: write https://", ep)
		}
	}
	checkPEMFile(bad, "storage.ca_cert", s.CACert)
	switch {
	case (s.Cert == "") != (s.Key == ""):
		bad("storage.cert", "[storage] cert and key (the etcd client certificate) go together")
	case s.Cert != "":
		if _, err := tls.LoadX509KeyPair(s.Cert, s.Key); err != nil {
			bad("storage.cert", "cannot load etcd client cert %q / key %q: %v", s.Cert, s.Key, err)
		}
	}
	if s.Username == "" && s.Password != "" {
		bad("storage.password", "[storage] password is set without username")
	}
	if s.Username != "" && s.Password == "" {
		bad("storage.username", "[storage] username %q has no password", s.Username)
	}
	if s.LockTTL != 0 && time.Duration(s.LockTTL) < MinLockTTL {
		bad("storage.lock_ttl", "lock_ttl = %q: the shortest etcd lease is %s", time.Duration(s.LockTTL), MinLockTTL)
	}
}

// checkFileOnly catches etcd settings left on the file backend, most
// likely a forgotten backend = "etcd".
func (s *Storage) checkFileOnly(bad func(string, string, ...any)) {
	for _, k := range []struct {
		key string
		set bool
	}{
		{"endpoints", len(s.Endpoints) > 0}, {"prefix", s.Prefix != ""}, {"username", s.Username != ""},
		{"password", s.Password != ""}, {"ca_cert", s.CACert != ""}, {"cert", s.Cert != ""}, {"key", s.Key != ""},
		{"lock_ttl", s.LockTTL != 0},
	} {
		if k.set {
			bad("storage."+k.key, "[storage] %s is an etcd setting but backend is \"file\": add backend = \"etcd\", or remove %s", k.key, k.key)
		}
	}
}

// checkIntervals validates the intervals that apply to every backend.
func (s *Storage) checkIntervals(bad func(string, string, ...any)) {
	if d := s.SyncInterval; d != 0 && time.Duration(d) < time.Second {
		bad("storage.sync_interval", "sync_interval = %q: want at least 1s", time.Duration(d))
	}
	if d := s.HealthInterval; d != 0 && time.Duration(d) < time.Second {
		bad("storage.health_interval", "health_interval = %q: want at least 1s", time.Duration(d))
	}
}
