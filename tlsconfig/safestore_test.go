package tlsconfig

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"testing"

	"github.com/caddyserver/certmagic"
)

// A certificate asset overwritten and then deleted (certmagic's rollback
// of a half-saved certificate) gets its previous content back; an asset
// that did not exist before is deleted; a completed set (metadata
// written) is deleted for real. The lock interfaces certmagic looks for
// survive the wrapping.
func TestRollbackSafeStorage(t *testing.T) {
	ctx := context.Background()
	fsStore := &certmagic.FileStorage{Path: t.TempDir()}
	s := rollbackSafeStorage(fsStore, slog.New(slog.DiscardHandler))
	if _, ok := s.(certmagic.TryLocker); !ok {
		t.Error("the wrapper hides FileStorage's TryLock")
	}
	if _, ok := s.(certmagic.LockLeaseRenewer); ok {
		t.Error("the wrapper claims RenewLockLease, which FileStorage lacks")
	}
	key := "certificates/ca/a.test/a.test.key"
	crt := "certificates/ca/a.test/a.test.crt"
	meta := "certificates/ca/a.test/a.test.json"
	for k, v := range map[string]string{key: "old key", crt: "old crt", meta: "old meta"} {
		if err := fsStore.Store(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	// a renewal's save: key written, certificate fails, rollback
	if err := s.Store(ctx, key, []byte("new key")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if b, err := fsStore.Load(ctx, key); err != nil || string(b) != "old key" {
		t.Errorf("after rollback the key holds %q (%v), want the old key", b, err)
	}
	// a complete save, then a real delete
	for _, k := range []string{key, crt, meta} {
		if err := s.Store(ctx, k, []byte("new")); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := fsStore.Load(ctx, key); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("delete after a complete save: %v, want not found", err)
	}
	// a new name's rollback: nothing to restore
	nk := "certificates/ca/b.test/b.test.key"
	_ = s.Store(ctx, nk, []byte("k"))
	_ = s.Delete(ctx, nk)
	if _, err := fsStore.Load(ctx, nk); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("new asset rolled back: %v, want deleted", err)
	}
}
