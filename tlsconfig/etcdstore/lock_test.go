package etcdstore

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// lockAsync runs s.Lock in the background and reports its result.
func lockAsync(ctx context.Context, s *Storage, name string) <-chan error {
	done := make(chan error, 1)
	go func() { done <- s.Lock(ctx, name) }()
	return done
}

// mustNotFinish fails if done delivers within d.
func mustNotFinish(t *testing.T, done <-chan error, d time.Duration, what string) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("%s returned (%v) while the lock was held", what, err)
	case <-time.After(d):
	}
}

// mustFinish waits up to d for done and returns its error.
func mustFinish(t *testing.T, done <-chan error, d time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("%s did not return within %s", what, d)
		return nil
	}
}

// lockKeys counts the keys under the lock directory of name.
func lockKeys(t *testing.T, s *Storage, name string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := s.client.Get(ctx, s.lockRoot+name+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

func TestLockContended(t *testing.T) {
	t.Parallel()
	url := startEtcd(t, etcdOpts{}).url
	a := newTestStorage(t, url, nil)
	b := newTestStorage(t, url, nil)
	c := newTestStorage(t, url, nil)
	ctx := testCtx(t, 30*time.Second)
	const name = "issue_cert_a.test"

	if err := a.Lock(ctx, name); err != nil {
		t.Fatal(err)
	}
	bDone := lockAsync(ctx, b, name)
	mustNotFinish(t, bDone, 700*time.Millisecond, "second instance's Lock")
	if ok, err := c.TryLock(ctx, name); ok || err != nil {
		t.Fatalf("TryLock while held = %v, %v; want false, nil", ok, err)
	}
	if err := a.RenewLockLease(ctx, name, time.Minute); err != nil {
		t.Errorf("RenewLockLease by the holder: %v", err)
	}
	if err := b.RenewLockLease(ctx, name, time.Minute); err == nil {
		t.Error("RenewLockLease by a waiter succeeded")
	}

	released := time.Now()
	if err := a.Unlock(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := mustFinish(t, bDone, 5*time.Second, "second instance's Lock"); err != nil {
		t.Fatal(err)
	}
	t.Logf("waiter acquired %s after release", time.Since(released).Round(time.Millisecond))
	if ok, _ := c.TryLock(ctx, name); ok {
		t.Fatal("TryLock succeeded while the waiter holds the lock")
	}
	if err := b.Unlock(ctx, name); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.TryLock(ctx, name); !ok || err != nil {
		t.Fatalf("TryLock of a free lock = %v, %v", ok, err)
	}
	if err := c.Unlock(ctx, name); err != nil {
		t.Fatal(err)
	}
	if n := lockKeys(t, a, name); n != 0 {
		t.Errorf("%d lock keys left after all unlocked", n)
	}
}

// Two goroutines on one Storage exclude each other too (a concurrency.Mutex
// alone is re-entrant per session).
func TestLockSameStorage(t *testing.T) {
	t.Parallel()
	url := startEtcd(t, etcdOpts{}).url
	a := newTestStorage(t, url, nil)
	ctx := testCtx(t, 30*time.Second)

	if err := a.Lock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	second := lockAsync(ctx, a, "n")
	mustNotFinish(t, second, 500*time.Millisecond, "second goroutine's Lock")
	if ok, _ := a.TryLock(ctx, "n"); ok {
		t.Fatal("TryLock on the same Storage succeeded while held")
	}
	if err := a.Unlock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	if err := mustFinish(t, second, 5*time.Second, "second goroutine's Lock"); err != nil {
		t.Fatal(err)
	}
	if err := a.Unlock(ctx, "n"); err != nil {
		t.Fatal(err)
	}
}

// A holder that dies without unlocking loses the lock when its lease
// expires, within LockTTL, and a waiter takes it.
func TestLockCrashedHolderExpires(t *testing.T) {
	t.Parallel()
	url := startEtcd(t, etcdOpts{}).url
	const ttl = 2 * time.Second
	ttlCfg := func(c *Config) { c.LockTTL = ttl }
	holder := newTestStorage(t, url, ttlCfg)
	waiter := newTestStorage(t, url, ttlCfg)
	ctx := testCtx(t, 30*time.Second)
	const name = "issue_cert_crash.test"

	if err := holder.Lock(ctx, name); err != nil {
		t.Fatal(err)
	}
	done := lockAsync(ctx, waiter, name)
	mustNotFinish(t, done, 300*time.Millisecond, "waiter's Lock")

	// Crash: the holder's connection goes away without Unlock or Revoke,
	// so only the lease TTL can free the lock.
	crashed := time.Now()
	holder.client.Close()
	// A dead process runs no cleanup either: forget the held lock, so the
	// test's Close does not try to revoke through the closed client.
	holder.mu.Lock()
	clear(holder.held)
	holder.mu.Unlock()

	if err := mustFinish(t, done, ttl+3*time.Second, "waiter's Lock after holder crash"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(crashed)
	t.Logf("lock of crashed holder taken over after %s (TTL %s)", took.Round(time.Millisecond), ttl)
	// The holder renewed every TTL/3, so at least 2/3 of the TTL remained:
	// a much faster takeover would mean the lease was revoked, not expired.
	if took < ttl/2 {
		t.Errorf("takeover after %s: faster than the lease can expire", took)
	}
	if took > ttl+1500*time.Millisecond {
		t.Errorf("takeover after %s: well past the %s TTL", took, ttl)
	}
	if err := waiter.Unlock(ctx, name); err != nil {
		t.Fatal(err)
	}
}

// Lock gives up promptly when its context ends, leaves no waiter key
// behind, and the lock stays usable.
func TestLockContextCancel(t *testing.T) {
	t.Parallel()
	url := startEtcd(t, etcdOpts{}).url
	a := newTestStorage(t, url, nil)
	b := newTestStorage(t, url, nil)
	ctx := testCtx(t, 30*time.Second)
	const name = "cancel"

	if err := a.Lock(ctx, name); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := b.Lock(short, name)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock with expiring context = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("Lock returned %s after a 300ms deadline", d)
	}
	if n := lockKeys(t, a, name); n != 1 {
		t.Errorf("%d lock keys after cancelled waiter, want only the holder's", n)
	}

	// An explicitly cancelled context too.
	cctx, cancel2 := context.WithCancel(ctx)
	done := lockAsync(cctx, b, name)
	time.Sleep(200 * time.Millisecond)
	cancel2()
	if err := mustFinish(t, done, time.Second, "cancelled Lock"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Lock = %v, want context.Canceled", err)
	}

	if err := a.Unlock(ctx, name); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(ctx, name); !ok || err != nil {
		t.Fatalf("TryLock after cancelled waits = %v, %v", ok, err)
	}
	b.Unlock(ctx, name)
}

// Unlock releases only a lock this Storage took.
func TestUnlockOnlyOwn(t *testing.T) {
	t.Parallel()
	url := startEtcd(t, etcdOpts{}).url
	a := newTestStorage(t, url, nil)
	b := newTestStorage(t, url, nil)
	ctx := testCtx(t, 30*time.Second)

	if err := a.Lock(ctx, "own"); err != nil {
		t.Fatal(err)
	}
	if err := b.Unlock(ctx, "own"); err == nil {
		t.Error("Unlock of another instance's lock succeeded")
	}
	if ok, _ := b.TryLock(ctx, "own"); ok {
		t.Fatal("lock was released by a non-holder's Unlock")
	}
	if err := a.Unlock(ctx, "own"); err != nil {
		t.Fatal(err)
	}
	if err := a.Unlock(ctx, "own"); err == nil {
		t.Error("second Unlock succeeded")
	}
	// An Unlock whose context is already cancelled still releases
	// (certmagic passes context.WithoutCancel, but callers may not).
	if err := a.Lock(ctx, "own"); err != nil {
		t.Fatal(err)
	}
	dead, cancel := context.WithCancel(ctx)
	cancel()
	if err := a.Unlock(dead, "own"); err != nil {
		t.Fatalf("Unlock with cancelled context: %v", err)
	}
	if ok, _ := b.TryLock(ctx, "own"); !ok {
		t.Fatal("lock still held after Unlock with cancelled context")
	}
	b.Unlock(ctx, "own")
}

// Lock names map to etcd as they map to FileStorage lock files
// (StorageKeys.Safe), so the same names collide on both.
func TestLockNamesLikeFileStorage(t *testing.T) {
	t.Parallel()
	url := startEtcd(t, etcdOpts{}).url
	a := newTestStorage(t, url, nil)
	b := newTestStorage(t, url, nil)
	ctx := testCtx(t, 30*time.Second)

	if err := a.Lock(ctx, "Issue_Cert_*.Example.com"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.TryLock(ctx, "issue_cert_wildcard_.example.com"); ok {
		t.Error("names FileStorage treats as one lock were two locks")
	}
	if ok, _ := b.TryLock(ctx, "issue_cert_other.example.com"); !ok {
		t.Error("unrelated lock name was blocked")
	}
	b.Unlock(ctx, "issue_cert_other.example.com")
	a.Unlock(ctx, "Issue_Cert_*.Example.com")
}

// Close releases held locks at once instead of leaving them to the TTL.
func TestCloseReleasesLocks(t *testing.T) {
	t.Parallel()
	url := startEtcd(t, etcdOpts{}).url
	a := newTestStorage(t, url, func(c *Config) { c.LockTTL = time.Minute })
	b := newTestStorage(t, url, nil)
	ctx := testCtx(t, 30*time.Second)

	if err := a.Lock(ctx, "closing"); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(ctx, "closing"); !ok || err != nil {
		t.Fatalf("TryLock after holder Close = %v, %v", ok, err)
	}
	b.Unlock(ctx, "closing")
	if err := a.Lock(ctx, "closing"); err == nil {
		t.Error("Lock on a closed Storage succeeded")
	}
}
