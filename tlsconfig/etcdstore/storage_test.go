package etcdstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// exerciseStorage checks the certmagic.Storage behaviour certmagic relies
// on. It runs against certmagic.FileStorage as well as etcd, so that any
// difference between the two shows up as a failure of one of them.
func exerciseStorage(t *testing.T, s certmagic.Storage) {
	ctx := testCtx(t, 30*time.Second)
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	files := map[string][]byte{
		"acme/users/a@x.test/a@x.test.json": []byte(`{"a":1}`),
		"acme/users/a@x.test/a@x.test.key":  []byte("key a"),
		"acme/users/b@x.test/b@x.test.json": []byte(`{"b":2}`),
		"certs/a/x.crt":                     binary,
		"certs/a-c/x.crt":                   []byte("cert a-c"),
		"top":                               {},
	}

	// Nothing yet.
	if _, err := s.Load(ctx, "acme/users"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing) error = %v, want fs.ErrNotExist", err)
	}
	if _, err := s.Stat(ctx, "acme"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat(missing) error = %v, want fs.ErrNotExist", err)
	}
	if _, err := s.List(ctx, "acme", true); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List(missing) error = %v, want fs.ErrNotExist", err)
	}
	if s.Exists(ctx, "acme") {
		t.Error("Exists(missing) = true")
	}
	if err := s.Delete(ctx, "acme/nothing"); err != nil {
		t.Errorf("Delete(missing) = %v, want nil", err)
	}

	before := time.Now().Add(-time.Second)
	for k, v := range files {
		if err := s.Store(ctx, k, v); err != nil {
			t.Fatalf("Store(%q): %v", k, err)
		}
	}
	for k, v := range files {
		got, err := s.Load(ctx, k)
		if err != nil || !bytes.Equal(got, v) {
			t.Errorf("Load(%q) = %q, %v; want %q", k, got, err, v)
		}
	}
	if err := s.Store(ctx, "top", []byte("overwritten")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Load(ctx, "top"); string(got) != "overwritten" {
		t.Errorf("Load after overwrite = %q", got)
	}

	for key, want := range map[string]bool{
		"acme/users/a@x.test/a@x.test.json": true,
		"acme/users":                        true,
		"acme":                              true,
		"acme/use":                          false, // a prefix of a component is not a directory
		"acme/users/a@x.test/a@x":           false,
		// Not "certs/a/x.crt/more": FileStorage says it exists, because
		// os.Stat fails with ENOTDIR, which is not fs.ErrNotExist.
	} {
		if got := s.Exists(ctx, key); got != want {
			t.Errorf("Exists(%q) = %v, want %v", key, got, want)
		}
	}

	fi, err := s.Stat(ctx, "certs/a/x.crt")
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsTerminal || fi.Size != int64(len(binary)) || fi.Key != "certs/a/x.crt" {
		t.Errorf("Stat(file) = %+v", fi)
	}
	if fi.Modified.Before(before) || fi.Modified.After(time.Now().Add(time.Second)) {
		t.Errorf("Stat(file).Modified = %v, want about now", fi.Modified)
	}
	di, err := s.Stat(ctx, "acme/users/a@x.test")
	if err != nil {
		t.Fatal(err)
	}
	if di.IsTerminal || di.Key != "acme/users/a@x.test" {
		t.Errorf("Stat(dir) = %+v", di)
	}
	if di.Modified.Before(before) {
		t.Errorf("Stat(dir).Modified = %v, want about now", di.Modified)
	}

	list := func(dir string, recursive bool, want ...string) {
		t.Helper()
		got, err := s.List(ctx, dir, recursive)
		if err != nil {
			t.Errorf("List(%q, %v): %v", dir, recursive, err)
			return
		}
		if !slices.Equal(got, want) {
			t.Errorf("List(%q, %v) =\n %q\nwant\n %q", dir, recursive, got, want)
		}
	}
	list("acme/users", false, "acme/users/a@x.test", "acme/users/b@x.test")
	list("", false, "acme", "certs", "top")
	list("certs", true, "certs/a", "certs/a/x.crt", "certs/a-c", "certs/a-c/x.crt")
	list("top", false) // a file has no children

	// A key cannot be a file and a directory at once.
	if err := s.Store(ctx, "top/child", []byte("x")); err == nil {
		t.Error("Store under a file succeeded")
	}
	if err := s.Store(ctx, "acme/users", []byte("x")); err == nil {
		t.Error("Store onto a directory succeeded")
	}
	if got, _ := s.Load(ctx, "top"); string(got) != "overwritten" {
		t.Errorf("refused Store changed the file: %q", got)
	}

	// Deleting a directory deletes what is under it, and only that.
	if err := s.Delete(ctx, "acme/users/a@x.test"); err != nil {
		t.Fatal(err)
	}
	if s.Exists(ctx, "acme/users/a@x.test/a@x.test.json") || s.Exists(ctx, "acme/users/a@x.test") {
		t.Error("directory still exists after Delete")
	}
	list("acme/users", true, "acme/users/b@x.test", "acme/users/b@x.test/b@x.test.json")
	if err := s.Delete(ctx, "certs/a/x.crt"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctx, "certs/a/x.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load after Delete: %v", err)
	}
	if got, _ := s.Load(ctx, "certs/a-c/x.crt"); string(got) != "cert a-c" {
		t.Errorf("Delete of certs/a/x.crt touched certs/a-c: %q", got)
	}
}

func TestSemanticsFileStorage(t *testing.T) {
	t.Parallel()
	exerciseStorage(t, &certmagic.FileStorage{Path: t.TempDir()})
}

func TestSemanticsEtcd(t *testing.T) {
	t.Parallel()
	url := startEtcd(t, etcdOpts{}).url
	s := newTestStorage(t, url, nil)
	exerciseStorage(t, s)

	ctx := testCtx(t, 30*time.Second)
	t.Run("nothing exists under a file", func(t *testing.T) {
		if s.Exists(ctx, "top/more") {
			t.Error("Exists(file/child) = true")
		}
	})
	t.Run("implicit directories vanish", func(t *testing.T) {
		if err := s.Store(ctx, "gone/a/b", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, "gone/a/b"); err != nil {
			t.Fatal(err)
		}
		if s.Exists(ctx, "gone") {
			t.Error("directory exists with nothing under it")
		}
		if _, err := s.List(ctx, "gone", false); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("List(empty dir) = %v, want fs.ErrNotExist", err)
		}
	})
	t.Run("keys are normalised like file paths", func(t *testing.T) {
		if err := s.Store(ctx, "/norm//a/./b/", []byte("v")); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Load(ctx, "norm/a/b"); err != nil || string(got) != "v" {
			t.Errorf("Load(norm/a/b) = %q, %v", got, err)
		}
		if got, err := s.List(ctx, "norm/", true); err != nil || !slices.Equal(got, []string{"norm/a", "norm/a/b"}) {
			t.Errorf("List(norm/) = %q, %v", got, err)
		}
	})
	t.Run("refused keys", func(t *testing.T) {
		if err := s.Store(ctx, reservedDir+"/locks/x", []byte("v")); !errors.Is(err, ErrReservedKey) {
			t.Errorf("Store(reserved) = %v, want ErrReservedKey", err)
		}
		if err := s.Delete(ctx, reservedDir); !errors.Is(err, ErrReservedKey) {
			t.Errorf("Delete(reserved) = %v, want ErrReservedKey", err)
		}
		if err := s.Store(ctx, "a/../../b", []byte("v")); err == nil || !strings.Contains(err.Error(), "..") {
			t.Errorf("Store(..) = %v", err)
		}
		if err := s.Delete(ctx, ""); err == nil {
			t.Error("Delete(root) succeeded")
		}
		if err := s.Delete(ctx, "/"); err == nil {
			t.Error("Delete(/) succeeded")
		}
		if !s.Exists(ctx, "top") {
			t.Error("refused root Delete removed data")
		}
	})
	t.Run("root listing hides bookkeeping", func(t *testing.T) {
		if err := s.Lock(ctx, "some_lock"); err != nil {
			t.Fatal(err)
		}
		defer s.Unlock(ctx, "some_lock")
		keys, err := s.List(ctx, "", true)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if strings.Contains(k, reservedDir) {
				t.Errorf("List(root) shows %q", k)
			}
		}
	})
	t.Run("stat of directory tracks newest store", func(t *testing.T) {
		s.Store(ctx, "st/old", []byte("1"))
		time.Sleep(20 * time.Millisecond)
		s.Store(ctx, "st/sub/new", []byte("2"))
		d, err := s.Stat(ctx, "st")
		if err != nil {
			t.Fatal(err)
		}
		f, _ := s.Stat(ctx, "st/sub/new")
		if !d.Modified.Equal(f.Modified) {
			t.Errorf("Stat(dir).Modified = %v, newest file %v", d.Modified, f.Modified)
		}
	})
	t.Run("prefixes isolate", func(t *testing.T) {
		other := newTestStorage(t, url, func(c *Config) { c.Prefix = "test-other" })
		if other.Exists(ctx, "top") {
			t.Error("key visible under another prefix")
		}
		if err := other.Store(ctx, "top", []byte("other")); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Load(ctx, "top"); string(got) != "overwritten" {
			t.Errorf("other prefix overwrote key: %q", got)
		}
	})
}

func TestListPaging(t *testing.T) {
	t.Parallel()
	url := startEtcd(t, etcdOpts{}).url
	s := newTestStorage(t, url, nil)
	ctx := testCtx(t, 30*time.Second)
	var want []string
	for i := 0; i < 25; i++ {
		k := fmt.Sprintf("p/%02d", i)
		want = append(want, k)
		if err := s.Store(ctx, k, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// Locks and mtimes live between data keys in etcd's order; the root
	// listing must page across and around them.
	if err := s.Lock(ctx, "paging"); err != nil {
		t.Fatal(err)
	}
	defer s.Unlock(ctx, "paging")
	for _, k := range []string{"-first", ".etcdstor", ".etcdstore-x/y", "zz"} {
		if err := s.Store(ctx, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	s.pageSize = 4
	got, err := s.List(ctx, "p", false)
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("paged List = %q, %v", got, err)
	}
	got, err = s.List(ctx, "", false)
	wantRoot := []string{"-first", ".etcdstor", ".etcdstore-x", "p", "zz"}
	if err != nil || !slices.Equal(got, wantRoot) {
		t.Errorf("paged root List = %q, %v; want %q", got, err, wantRoot)
	}
}

func TestValueSizeLimit(t *testing.T) {
	t.Parallel()
	url := startEtcd(t, etcdOpts{}).url
	s := newTestStorage(t, url, nil)
	ctx := testCtx(t, 30*time.Second)

	max := bytes.Repeat([]byte{0xA5}, MaxValueSize)
	if err := s.Store(ctx, "big/max", max); err != nil {
		t.Fatalf("Store of exactly MaxValueSize: %v", err)
	}
	if got, err := s.Load(ctx, "big/max"); err != nil || !bytes.Equal(got, max) {
		t.Fatalf("Load of MaxValueSize value: %d bytes, %v", len(got), err)
	}

	err := s.Store(ctx, "big/over", append(max, 0))
	if !errors.Is(err, ErrValueTooLarge) {
		t.Fatalf("Store over MaxValueSize = %v, want ErrValueTooLarge", err)
	}
	for _, want := range []string{`"big/over"`, fmt.Sprint(MaxValueSize + 1)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if s.Exists(ctx, "big/over") {
		t.Error("oversize value was stored")
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, cfg := range map[string]Config{
		"no endpoints":       {},
		"cert without key":   {Endpoints: []string{"https://127.0.0.1:1"}, Cert: dir + "/c.pem"},
		"missing CA file":    {Endpoints: []string{"https://127.0.0.1:1"}, CACert: dir + "/missing-ca.pem"},
		"TLS files on http":  {Endpoints: []string{"http://127.0.0.1:1"}, CACert: dir + "/missing-ca.pem"},
		"negative lock TTL":  {Endpoints: []string{"http://127.0.0.1:1"}, LockTTL: -time.Second},
		"missing cert files": {Endpoints: []string{"https://127.0.0.1:1"}, Cert: dir + "/c.pem", Key: dir + "/k.pem"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// New must fail, within about DialTimeout, when nothing listens.
func TestNewUnreachable(t *testing.T) {
	t.Parallel()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = New(Config{Endpoints: []string{fmt.Sprintf("http://127.0.0.1:%d", port)}, DialTimeout: time.Second})
	if err == nil {
		t.Fatal("New succeeded with nothing listening")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("New took %s to fail with DialTimeout 1s", d)
	}
	t.Logf("New: %v", err)
	if !strings.Contains(err.Error(), "127.0.0.1") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error does not name the endpoint and the cause: %v", err)
	}
}

// Requests and Lock are bounded by RequestTimeout even when the caller's
// context has no deadline and etcd is gone.
func TestBoundedWhenEtcdDies(t *testing.T) {
	t.Parallel()
	proc := startEtcd(t, etcdOpts{})
	s := newTestStorage(t, proc.url, func(c *Config) { c.RequestTimeout = time.Second })
	ctx := context.Background()
	if err := s.Store(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	proc.stop()

	start := time.Now()
	_, err := s.Load(ctx, "k")
	if err == nil {
		t.Fatal("Load succeeded with etcd dead")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Load took %s with RequestTimeout 1s", d)
	}
	if !strings.Contains(err.Error(), `load "k"`) {
		t.Errorf("error lacks operation and key: %v", err)
	}
	t.Logf("Load: %v", err)

	start = time.Now()
	err = s.Lock(ctx, "dead")
	if err == nil {
		t.Fatal("Lock succeeded with etcd dead")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Lock took %s with RequestTimeout 1s", d)
	}
	t.Logf("Lock: %v", err)
}
