package etcdstore

import (
	"context"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/etcdtest"
)

// etcdOpts tunes a test server.
type etcdOpts struct {
	// tls, when set, serves clients over https with these files and
	// requires client certificates signed by ca.
	tls *tlsFiles
}

type tlsFiles struct{ ca, serverCert, serverKey string }

// etcdProc is a running test etcd.
type etcdProc struct {
	url  string
	stop func() // kills it; safe to call more than once
}

// startEtcd runs a throwaway etcd (see internal/etcdtest) and returns its
// client URL; it is killed when the test ends.
func startEtcd(t *testing.T, opts etcdOpts) *etcdProc {
	t.Helper()
	var o etcdtest.Options
	if opts.tls != nil {
		o.TLS = &etcdtest.TLSFiles{CA: opts.tls.ca, ServerCert: opts.tls.serverCert, ServerKey: opts.tls.serverKey}
	}
	s := etcdtest.Start(t, o)
	return &etcdProc{url: s.URL, stop: s.Stop}
}

// freePort asks the kernel for a free loopback port.
func freePort() (int, error) { return etcdtest.FreePort() }

// newTestStorage connects a Storage to url with a short LockTTL and
// closes it at the end of the test.
func newTestStorage(t *testing.T, url string, mod func(*Config)) *Storage {
	t.Helper()
	cfg := Config{
		Endpoints:      []string{url},
		Prefix:         "test/",
		DialTimeout:    5 * time.Second,
		RequestTimeout: 5 * time.Second,
		LockTTL:        2 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// testCtx is a context bounded well below the package test timeout, so a
// hang fails one test with a clear message.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
