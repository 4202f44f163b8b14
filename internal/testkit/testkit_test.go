package testkit

import (
	"context"
	"errors"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// fatalTB records a Fatalf and stops the goroutine the way testing does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = format
	runtime.Goexit()
}

// WaitFor returns once cond holds, and fails after limit and a bounded
// number of asks when it never does.
func TestWaitFor(t *testing.T) {
	var n atomic.Int64
	WaitFor(t, 5*time.Second, "third ask", func() error {
		if n.Add(1) < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if n.Load() != 3 {
		t.Errorf("asked %d times, want 3", n.Load())
	}

	n.Store(0)
	f := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		WaitFor(f, 200*time.Millisecond, "never", func() error { n.Add(1); return errors.New("never") })
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("WaitFor did not give up")
	}
	if !strings.Contains(f.msg, "not within") {
		t.Errorf("no failure reported: %q", f.msg)
	}
	if max := int64(200*time.Millisecond/WaitPoll) + 2; n.Load() > max {
		t.Errorf("asked %d times, want at most %d", n.Load(), max)
	}
}

// CountingStorage counts each key's loads over a real file storage and
// holds one name's private-key loads until released.
func TestCountingStorage(t *testing.T) {
	ctx := context.Background()
	s := NewCountingStorage(&certmagic.FileStorage{Path: t.TempDir()})
	key := certmagic.StorageKeys.SitePrivateKey("ca", "a.test")
	crt := certmagic.StorageKeys.SiteCert("ca", "a.test")
	for _, k := range []string{key, crt} {
		if err := s.Store(ctx, k, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	release := s.Hold("a.test")
	got := make(chan error, 1)
	go func() { _, err := s.Load(ctx, key); got <- err }()
	if _, err := s.Load(ctx, crt); err != nil { // not held: a certificate
		t.Fatal(err)
	}
	select {
	case err := <-got:
		t.Fatalf("held load returned before release: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	release()
	release() // twice is fine
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if s.Loads(key) != 1 || s.Loads(crt) != 1 || s.KeyLoads() != 1 || s.LoadsOf("a.test") != 2 {
		t.Errorf("Loads key %d crt %d, KeyLoads %d, LoadsOf %d; want 1 1 1 2", s.Loads(key), s.Loads(crt), s.KeyLoads(), s.LoadsOf("a.test"))
	}
}

// Only tests import testkit: no file that builds into gatehouse does.
func TestImportedOnlyByTests(t *testing.T) {
	root := filepath.Join("..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not at %s: %v", root, err)
	}
	const self = `"github.com/gatehouse-proxy/gatehouse/internal/testkit"`
	fset := token.NewFileSet()
	seen := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			if imp.Path.Value != self {
				continue
			}
			seen++
			if !strings.HasSuffix(p, "_test.go") {
				t.Errorf("%s imports internal/testkit: only _test.go files may", p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen == 0 {
		t.Errorf("no file imports testkit: the walk missed the tree")
	}
}
