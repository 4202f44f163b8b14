package etcdstore

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// A directory tree survives FileStorage -> etcd -> FileStorage byte for
// byte, as `gatehouse storage copy` does it.
func TestCopyRoundTrip(t *testing.T) {
	t.Parallel()
	url := startEtcd(t, etcdOpts{}).url
	etcd := newTestStorage(t, url, nil)
	ctx := testCtx(t, 60*time.Second)

	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		return b
	}
	src := t.TempDir()
	want := map[string][]byte{
		"certificates/acme-v02.api.letsencrypt.org-directory/a.test/a.test.crt":                     random(1800),
		"certificates/acme-v02.api.letsencrypt.org-directory/a.test/a.test.key":                     random(227),
		"certificates/acme-v02.api.letsencrypt.org-directory/a.test/a.test.json":                    []byte(`{"sans":["a.test"]}` + "\n"),
		"certificates/acme-v02.api.letsencrypt.org-directory/wildcard_.b.test/wildcard_.b.test.crt": random(2100),
		"acme/acme-v02.api.letsencrypt.org-directory/users/ops@a.test/ops.json":                     []byte("{}"),
		"ocsp/a.test-12345":    random(900),
		"empty":                {},
		"nul-and-crlf":         []byte("a\x00b\r\nc\xff"),
		"deep/1/2/3/4/5/6/7/x": []byte("deep"),
		"big":                  random(MaxValueSize), // the largest value etcd storage takes
	}
	for k, v := range want {
		p := filepath.Join(src, filepath.FromSlash(k))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, v, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// An empty directory has nothing to copy.
	if err := os.MkdirAll(filepath.Join(src, "emptydir"), 0o700); err != nil {
		t.Fatal(err)
	}

	n, err := Copy(ctx, &certmagic.FileStorage{Path: src}, etcd)
	if err != nil {
		t.Fatalf("copy dir -> etcd: %v", err)
	}
	if n != len(want) {
		t.Errorf("copy dir -> etcd copied %d keys, want %d", n, len(want))
	}

	dst := filepath.Join(t.TempDir(), "restored")
	n, err = Copy(ctx, etcd, &certmagic.FileStorage{Path: dst})
	if err != nil {
		t.Fatalf("copy etcd -> dir: %v", err)
	}
	if n != len(want) {
		t.Errorf("copy etcd -> dir copied %d keys, want %d", n, len(want))
	}

	got := testkit.ReadTree(t, dst)
	if len(got) != len(want) {
		t.Errorf("restored tree has %d files, want %d", len(got), len(want))
	}
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%s missing after round trip", k)
			continue
		}
		if !bytes.Equal(g, v) {
			t.Errorf("%s: %d bytes after round trip differ from the original %d", k, len(g), len(v))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected file %s after round trip", k)
		}
	}
}

// Copy stops at the first failure, names the key, and deletes nothing.
func TestCopyStopsOnError(t *testing.T) {
	t.Parallel()
	url := startEtcd(t, etcdOpts{}).url
	etcd := newTestStorage(t, url, nil)
	ctx := testCtx(t, 30*time.Second)

	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "a"), []byte("a"), 0o600)
	os.WriteFile(filepath.Join(src, "z-too-big"), make([]byte, MaxValueSize+1), 0o600)
	if err := etcd.Store(ctx, "existing", []byte("keep")); err != nil {
		t.Fatal(err)
	}
	n, err := Copy(ctx, &certmagic.FileStorage{Path: src}, etcd)
	if err == nil || n != 1 {
		t.Fatalf("Copy = %d, %v; want 1 and an error", n, err)
	}
	if !bytes.Contains([]byte(err.Error()), []byte(`"z-too-big"`)) {
		t.Errorf("error does not name the key: %v", err)
	}
	for _, k := range []string{"a", "existing"} {
		if !etcd.Exists(ctx, k) {
			t.Errorf("%s gone after failed copy", k)
		}
	}
	// A source that does not exist is an error, not an empty copy.
	if _, err := Copy(ctx, &certmagic.FileStorage{Path: filepath.Join(src, "typo")}, etcd); err == nil {
		t.Error("Copy from a missing directory succeeded")
	}
}

// Without Overwrite a key that differs in the destination stops the copy
// before anything is written; identical keys count as Same; Skip leaves
// keys out.
func TestCopyTreeConflicts(t *testing.T) {
	t.Parallel()
	url := startEtcd(t, etcdOpts{}).url
	etcd := newTestStorage(t, url, nil)
	ctx := testCtx(t, 30*time.Second)

	src := t.TempDir()
	for k, v := range map[string]string{"a": "same", "b": "new", "c": "fresh", "locks/x.lock": "{}"} {
		p := filepath.Join(src, filepath.FromSlash(k))
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range map[string]string{"a": "same", "b": "newer, in use"} {
		if err := etcd.Store(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	skipLocks := func(k string) bool { return k == "locks" || strings.HasPrefix(k, "locks/") }
	from := &certmagic.FileStorage{Path: src}

	st, err := CopyTree(ctx, from, etcd, CopyOptions{Skip: skipLocks})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), `b`) || st.Copied != 0 {
		t.Fatalf("CopyTree = %+v, %v; want ErrConflict naming b, nothing copied", st, err)
	}
	t.Logf("conflict: %v", err)
	if v, _ := etcd.Load(ctx, "b"); string(v) != "newer, in use" {
		t.Errorf("b = %q after a refused copy", v)
	}
	if etcd.Exists(ctx, "c") {
		t.Error("c written although the copy was refused")
	}

	st, err = CopyTree(ctx, from, etcd, CopyOptions{Skip: skipLocks, Overwrite: true})
	if err != nil {
		t.Fatal(err)
	}
	if st != (CopyStats{Copied: 2, Same: 1, Skipped: 1}) {
		t.Errorf("stats = %+v, want 2 copied (b, c), 1 same (a), 1 skipped (the lock file)", st)
	}
	if v, _ := etcd.Load(ctx, "b"); string(v) != "new" {
		t.Errorf("b = %q after the overwriting copy", v)
	}
	if etcd.Exists(ctx, "locks/x.lock") {
		t.Error("skipped lock file was copied")
	}
}
