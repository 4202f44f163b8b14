package tlsconfig

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

// certmagic saves a certificate as three keys written one after the
// other (private key, certificate, metadata) and, when a write fails,
// deletes the ones it already wrote (storeTx). On a renewal those had
// replaced the served certificate's files: a certificate write that
// fails after the key write (a full disk, a file made immutable, a
// store hiccup) leaves the old certificate in storage without its
// private key, and the next start has to order the name again.
//
// rollbackSafe is the storage certmagic's configs write through: before
// it overwrites a certificate asset it keeps the previous content, and
// a delete of an asset it overwrote moments ago puts that content back
// instead. A successful metadata write (the last of the three) ends the
// transaction. Everything else passes straight through.

// rollbackWindow bounds how long a previous version is kept.
const rollbackWindow = 5 * time.Minute

type rollbackSafe struct {
	certmagic.Storage
	log *slog.Logger

	mu   sync.Mutex
	prev map[string]prevAsset // key -> what it held before the last write
}

type prevAsset struct {
	data []byte
	at   time.Time
}

// rollbackSafeStorage wraps s, keeping the optional lock interfaces
// certmagic looks for (TryLocker, LockLeaseRenewer) when s has them.
func rollbackSafeStorage(s certmagic.Storage, log *slog.Logger) certmagic.Storage {
	r := &rollbackSafe{Storage: s, log: log, prev: map[string]prevAsset{}}
	t, isTry := s.(certmagic.TryLocker)
	l, isLease := s.(certmagic.LockLeaseRenewer)
	switch {
	case isTry && isLease:
		return &rollbackSafeTryLease{rollbackSafe: r, t: t, l: l}
	case isTry:
		return &rollbackSafeTry{rollbackSafe: r, t: t}
	case isLease:
		return &rollbackSafeLease{rollbackSafe: r, l: l}
	}
	return r
}

type rollbackSafeTry struct {
	*rollbackSafe
	t certmagic.TryLocker
}

func (r *rollbackSafeTry) TryLock(ctx context.Context, name string) (bool, error) {
	return r.t.TryLock(ctx, name)
}

type rollbackSafeLease struct {
	*rollbackSafe
	l certmagic.LockLeaseRenewer
}

func (r *rollbackSafeLease) RenewLockLease(ctx context.Context, key string, d time.Duration) error {
	return r.l.RenewLockLease(ctx, key, d)
}

type rollbackSafeTryLease struct {
	*rollbackSafe
	t certmagic.TryLocker
	l certmagic.LockLeaseRenewer
}

func (r *rollbackSafeTryLease) TryLock(ctx context.Context, name string) (bool, error) {
	return r.t.TryLock(ctx, name)
}

func (r *rollbackSafeTryLease) RenewLockLease(ctx context.Context, key string, d time.Duration) error {
	return r.l.RenewLockLease(ctx, key, d)
}

// certAsset reports whether key is a certificate's key, chain or
// metadata (certificates/ISSUER/NAME/NAME.{key,crt,json}).
func certAsset(key string) bool {
	if !strings.HasPrefix(key, "certificates/") {
		return false
	}
	switch path.Ext(key) {
	case ".key", ".crt", ".json":
		return true
	}
	return false
}

func (r *rollbackSafe) Store(ctx context.Context, key string, value []byte) error {
	if !certAsset(key) {
		return r.Storage.Store(ctx, key, value)
	}
	old, err := r.Storage.Load(ctx, key)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err // cannot keep what is there: do not overwrite it
	}
	now := time.Now()
	r.mu.Lock()
	for k, p := range r.prev {
		if now.Sub(p.at) > rollbackWindow {
			delete(r.prev, k)
		}
	}
	if err == nil && !bytes.Equal(old, value) {
		r.prev[key] = prevAsset{data: old, at: now}
	}
	r.mu.Unlock()
	if err := r.Storage.Store(ctx, key, value); err != nil {
		return err
	}
	if path.Ext(key) == ".json" {
		// the last write of a certificate: the set is complete
		dir := path.Dir(key) + "/"
		r.mu.Lock()
		for k := range r.prev {
			if strings.HasPrefix(k, dir) {
				delete(r.prev, k)
			}
		}
		r.mu.Unlock()
	}
	return nil
}

func (r *rollbackSafe) Delete(ctx context.Context, key string) error {
	r.mu.Lock()
	p, ok := r.prev[key]
	delete(r.prev, key)
	r.mu.Unlock()
	if !ok || time.Since(p.at) > rollbackWindow {
		return r.Storage.Delete(ctx, key)
	}
	// certmagic rolling back a half-saved certificate: put back what
	// the first writes replaced, not nothing
	err := r.Storage.Store(ctx, key, p.data)
	if err != nil {
		r.log.Error("could not restore a certificate file after a failed save; the certificate in memory keeps serving",
			"key", key, "error", err)
	} else {
		r.log.Warn("a certificate save failed half-way; restored the previous file instead of deleting it", "key", key)
	}
	return err
}
