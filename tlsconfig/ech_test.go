package tlsconfig

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/etcdtest"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// echHandshake runs a real TLS 1.3 handshake over a loopback TCP
// connection: Go's client offering ECH with list and inner name inner,
// against a server decrypting with keys and serving a certificate for
// whatever name it is asked (the outer one when ECH is rejected). It
// returns the client's connection state or error, and the name the
// server saw.
func echHandshake(t *testing.T, ca *acmetest.TestCA, list []byte, keys []tls.EncryptedClientHelloKey, inner string) (tls.ConnectionState, string, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		srv := tls.Server(c, &tls.Config{
			EncryptedClientHelloKeys: keys,
			GetCertificate: func(chi *tls.ClientHelloInfo) (*tls.Certificate, error) {
				seen <- chi.ServerName
				certPEM, keyPEM, _, err := ca.Issue([]string{chi.ServerName}, "", time.Hour)
				if err != nil {
					return nil, err
				}
				cert, err := tls.X509KeyPair(certPEM, keyPEM)
				return &cert, err
			},
		})
		if srv.Handshake() == nil {
			_, _ = io.Copy(io.Discard, srv)
		}
	}()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), &tls.Config{
		ServerName: inner, RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13,
		EncryptedClientHelloConfigList: list,
	})
	var st tls.ConnectionState
	if err == nil {
		st = conn.ConnectionState()
		conn.Close()
	}
	select {
	case name := <-seen:
		return st, name, err
	case <-time.After(5 * time.Second):
		return st, "", err
	}
}

func echConfig(t *testing.T, public string) *routes.Config {
	return &routes.Config{ECH: routes.ECH{PublicName: public, Rotate: routes.Duration(30 * 24 * time.Hour)}}
}

// The keys gatehouse makes are ones Go's client encrypts to and Go's
// server decrypts with; the key file is 0600 and a second keyring on
// the same store (a replica, or `gatehouse ech`) reads the same keys.
func TestECHKeysServeAndPersist(t *testing.T) {
	dir := t.TempDir()
	st := &certmagic.FileStorage{Path: dir}
	ctx := context.Background()
	list, public, err := LoadECH(ctx, st, echConfig(t, "public.test"), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if public != "public.test" {
		t.Fatalf("public name %q", public)
	}
	fi, err := os.Stat(filepath.Join(dir, echKeysKey))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %v, want 0600 (it holds private keys)", echKeysKey, fi.Mode().Perm())
	}

	k := newECHKeyring(st, slog.Default())
	if err := k.configure(ctx, "public.test", 0); err != nil {
		t.Fatal(err)
	}
	defer k.close()
	if again, _ := k.ConfigList(); !bytes.Equal(again, list) {
		t.Fatal("a second keyring on the same store made other keys")
	}
	ca, err := acmetest.NewTestCA("ech test CA")
	if err != nil {
		t.Fatal(err)
	}
	cs, served, err := echHandshake(t, ca, list, k.Keys(), "secret.test")
	if err != nil {
		t.Fatal(err)
	}
	if !cs.ECHAccepted || served != "secret.test" {
		t.Fatalf("ECH accepted=%v, server saw %q; want accepted and the inner name secret.test", cs.ECHAccepted, served)
	}
}

// Rotation: after rotate a new key is published, a client holding the
// previous config still gets in for echRetain, and after that it is
// rejected with the current config as retry config, with which it
// gets in. A changed public name makes a new key at once.
func TestECHRotation(t *testing.T) {
	st := &certmagic.FileStorage{Path: t.TempDir()}
	ctx := context.Background()
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	k := newECHKeyring(st, slog.Default())
	k.now = func() time.Time { return now }
	rotate := 30 * 24 * time.Hour
	if err := k.configure(ctx, "public.test", rotate); err != nil {
		t.Fatal(err)
	}
	defer k.close()
	first, _ := k.ConfigList()
	ca, err := acmetest.NewTestCA("ech rotation CA")
	if err != nil {
		t.Fatal(err)
	}

	now = now.Add(rotate - time.Minute)
	if err := k.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if l, _ := k.ConfigList(); !bytes.Equal(l, first) {
		t.Fatal("rotated before rotate had passed")
	}

	now = now.Add(2 * time.Minute)
	if err := k.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	second, _ := k.ConfigList()
	if bytes.Equal(second, first) {
		t.Fatal("no new key after rotate")
	}
	keys := k.Keys()
	if len(keys) != 2 || !keys[0].SendAsRetry || keys[1].SendAsRetry {
		t.Fatalf("want the new key (sent as retry) and the old one (decrypt only); got %d keys", len(keys))
	}
	if cs, name, err := echHandshake(t, ca, first, keys, "secret.test"); err != nil || !cs.ECHAccepted || name != "secret.test" {
		t.Fatalf("old config within the retention: accepted=%v name=%q err=%v", cs.ECHAccepted, name, err)
	}

	now = now.Add(echRetain + time.Minute)
	if err := k.install(mustLoad(t, k)); err != nil {
		t.Fatal(err)
	}
	keys = k.Keys()
	if len(keys) != 1 {
		t.Fatalf("old key still decrypts %s after it was replaced (%d keys)", echRetain, len(keys))
	}
	_, name, err := echHandshake(t, ca, first, keys, "secret.test")
	var rej *tls.ECHRejectionError
	if !errors.As(err, &rej) || len(rej.RetryConfigList) == 0 {
		t.Fatalf("stale config: want an ECH rejection with retry configs, got %v", err)
	}
	if name != "public.test" {
		t.Fatalf("a rejected ECH hello must be answered under the public name; server saw %q", name)
	}
	if cs, name, err := echHandshake(t, ca, rej.RetryConfigList, keys, "secret.test"); err != nil || !cs.ECHAccepted || name != "secret.test" {
		t.Fatalf("retry with the server's retry configs: accepted=%v name=%q err=%v", cs.ECHAccepted, name, err)
	}

	if err := k.configure(ctx, "other.test", rotate); err != nil {
		t.Fatal(err)
	}
	if _, pub := k.ConfigList(); pub != "other.test" {
		t.Fatalf("public name change: config names %q", pub)
	}
}

func mustLoad(t *testing.T, k *echKeyring) echFile {
	t.Helper()
	f, err := k.load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// A key file that does not parse is reported and never replaced: the
// keys in memory go on serving.
func TestECHCorruptKeysKept(t *testing.T) {
	dir := t.TempDir()
	st := &certmagic.FileStorage{Path: dir}
	ctx := context.Background()
	k := newECHKeyring(st, slog.Default())
	if err := k.configure(ctx, "public.test", 0); err != nil {
		t.Fatal(err)
	}
	defer k.close()
	before, _ := k.ConfigList()
	if err := st.Store(ctx, echKeysKey, []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if err := k.refresh(ctx); err == nil {
		t.Fatal("a corrupt key file was accepted")
	}
	if b, _ := st.Load(ctx, echKeysKey); string(b) != "{not json" {
		t.Fatal("the corrupt key file was overwritten")
	}
	if l, _ := k.ConfigList(); !bytes.Equal(l, before) {
		t.Fatal("keys in memory changed after a failed refresh")
	}
}

// Replicas on one etcd share one key set: the first makes it, the
// second reads it, and a rotation by one reaches the other.
func TestECHReplicasShareKeysOnEtcd(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Options{})
	open := func() certmagic.Storage {
		st, err := OpenStorage(routes.Storage{Backend: "etcd", Endpoints: []string{etcd.URL}, Prefix: "ech/"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.(io.Closer).Close() })
		return st
	}
	ctx := context.Background()
	a, b := newECHKeyring(open(), slog.Default()), newECHKeyring(open(), slog.Default())
	if err := a.configure(ctx, "public.test", 0); err != nil {
		t.Fatal(err)
	}
	defer a.close()
	if err := b.configure(ctx, "public.test", 0); err != nil {
		t.Fatal(err)
	}
	defer b.close()
	la, _ := a.ConfigList()
	lb, _ := b.ConfigList()
	if !bytes.Equal(la, lb) {
		t.Fatal("two replicas on one etcd made different ECH keys")
	}
	later := time.Now().Add(DefaultECHRotate + time.Hour)
	a.now = func() time.Time { return later }
	if err := a.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	rotated, _ := a.ConfigList()
	if bytes.Equal(rotated, la) {
		t.Fatal("no rotation")
	}
	if err := b.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if lb, _ := b.ConfigList(); !bytes.Equal(lb, rotated) {
		t.Fatal("the other replica did not adopt the rotated key")
	}
	ca, err := acmetest.NewTestCA("ech etcd CA")
	if err != nil {
		t.Fatal(err)
	}
	if cs, _, err := echHandshake(t, ca, la, b.Keys(), "secret.test"); err != nil || !cs.ECHAccepted {
		t.Fatalf("replica b with the previous config: accepted=%v err=%v", cs.ECHAccepted, err)
	}
}
