package etcdstore

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3"
)

// writePKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate into dir and returns their file names.
func writePKI(t *testing.T, dir string) (ca, srvCert, srvKey, cliCert, cliKey string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "etcdstore test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalECPrivateKey(key)
		return write(cn+".crt", "CERTIFICATE", der), write(cn+".key", "EC PRIVATE KEY", keyDER)
	}
	ca = write("ca.crt", "CERTIFICATE", caDER)
	srvCert, srvKey = leaf(2, "server", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	cliCert, cliKey = leaf(3, "client", x509.ExtKeyUsageClientAuth, nil)
	return
}

// TLS with client certificates and username/password auth, as a
// production cluster would be set up: the Config fields reach etcd, and a
// user granted only the prefix can do everything the storage needs,
// including locks (lease grant, lock keys, revoke).
func TestTLSAndAuth(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca, srvCert, srvKey, cliCert, cliKey := writePKI(t, dir)
	url := startEtcd(t, etcdOpts{tls: &tlsFiles{ca: ca, serverCert: srvCert, serverKey: srvKey}}).url
	ctx := testCtx(t, 60*time.Second)

	// Set up users with a direct client (TLS from the same files).
	tc, err := buildTLS(Config{Endpoints: []string{url}, CACert: ca, Cert: cliCert, Key: cliKey})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, TLS: tc, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	steps := []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "root"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "gatehouse"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "gatehouse", "test/", clientv3.GetPrefixRangeEnd("test/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "gh", "ghpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "gh", "gatehouse"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("auth setup step %d: %v", i, err)
		}
	}

	cfg := Config{
		Endpoints: []string{url}, Prefix: "test/",
		CACert: ca, Cert: cliCert, Key: cliKey,
		Username: "gh", Password: "ghpw",
		DialTimeout: 5 * time.Second, RequestTimeout: 5 * time.Second, LockTTL: 2 * time.Second,
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New with TLS and auth: %v", err)
	}
	defer s.Close()
	if err := s.Store(ctx, "certificates/x/x.crt", []byte("pem")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Load(ctx, "certificates/x/x.crt"); err != nil || string(got) != "pem" {
		t.Fatalf("Load = %q, %v", got, err)
	}
	if keys, err := s.List(ctx, "", true); err != nil || len(keys) != 3 {
		t.Fatalf("List = %q, %v", keys, err)
	}
	if err := s.Lock(ctx, "issue_cert_x"); err != nil {
		t.Fatalf("Lock as restricted user: %v", err)
	}
	if err := s.RenewLockLease(ctx, "issue_cert_x", time.Minute); err != nil {
		t.Fatalf("RenewLockLease as restricted user: %v", err)
	}
	if err := s.Unlock(ctx, "issue_cert_x"); err != nil {
		t.Fatalf("Unlock as restricted user: %v", err)
	}
	if err := s.Delete(ctx, "certificates"); err != nil {
		t.Fatal(err)
	}

	// Each misconfiguration fails New with an error that says what is wrong,
	// even where gRPC itself only reports a timeout.
	for _, tc := range []struct {
		name, want string
		mod        func(*Config)
	}{
		{"wrong password", "authentication failed", func(c *Config) { c.Password = "nope" }},
		{"prefix not granted", "permission denied", func(c *Config) { c.Prefix = "other/" }},
		{"untrusted server", "unknown authority", func(c *Config) { c.CACert = cliCert }},
		{"no client cert", "bad certificate", func(c *Config) { c.Cert, c.Key = "", "" }},
	} {
		bad := cfg
		tc.mod(&bad)
		bad.DialTimeout = 2 * time.Second
		s2, err := New(bad)
		if err == nil {
			s2.Close()
			t.Errorf("%s: New succeeded", tc.name)
			continue
		}
		t.Logf("%s: %v", tc.name, err)
		if !strings.Contains(err.Error(), "etcdstore:") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q should carry context and mention %q", tc.name, err, tc.want)
		}
	}
}
