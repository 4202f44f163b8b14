package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/certmagic"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Locking design
//
// Each Lock or TryLock call grants its own lease (LockTTL) and runs a
// concurrency.Session on it, whose keepalive lives as long as the Storage;
// a concurrency.Mutex on that session takes the lock. So:
//
//   - a crashed or partitioned holder stops renewing its lease and etcd
//     deletes its lock key within LockTTL, releasing the lock by itself;
//   - the lock key embeds the lease ID, so Unlock deletes exactly the key
//     this call created and then revokes exactly that lease, and can never
//     release someone else's lock;
//   - two goroutines using the same Storage get distinct leases, so they
//     exclude each other in etcd. (A Mutex shared by one session would
//     not: concurrency.Mutex is re-entrant per session.) They are also
//     queued in-process first (gate), so that at most one call per name
//     per Storage is in etcd and Unlock knows which lock to release.
//
// Lock does not use concurrency.Mutex.Lock: on cancellation it cleans up
// its waiter key with the client's lifetime context, which blocks without
// bound while etcd is unreachable. Lock instead loops Mutex.TryLock (each
// try bounded by RequestTimeout) and, between tries, watches the current
// holder's key for its deletion in bounded windows.

// lockWatchWindow bounds one wait for the current holder to go; the loop
// then tries again, so a missed event costs at most this long.
const lockWatchWindow = 5 * time.Second

// lockRetryFloor spaces out tries that return immediately (e.g. a holder
// that keeps re-taking the lock), so the loop never spins.
const lockRetryFloor = 50 * time.Millisecond

// heldLock is one lock this Storage holds.
type heldLock struct {
	session *concurrency.Session
	mutex   *concurrency.Mutex
}

// gate is an in-process, context-aware mutex per lock name.
type gate struct {
	ch   chan struct{}
	refs int
}

// lockName maps a certmagic lock name to its etcd mutex prefix the way
// FileStorage maps it to a file name (StorageKeys.Safe), so two names share
// a lock on etcd exactly when they would share a lock file. Safe also
// removes '/', so one lock's prefix never contains another's.
func (s *Storage) lockName(op, name string) (string, error) {
	safe := certmagic.StorageKeys.Safe(name)
	if safe == "" {
		return "", fmt.Errorf("etcdstore: %s %q: lock name is empty after sanitising", op, name)
	}
	return safe, nil
}

// enter takes the in-process gate for name: blocking (until ctx ends)
// when wait, otherwise reporting false if it is taken.
func (s *Storage) enter(ctx context.Context, name string, wait bool) (bool, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false, errors.New("storage is closed")
	}
	g := s.gates[name]
	if g == nil {
		g = &gate{ch: make(chan struct{}, 1)}
		s.gates[name] = g
	}
	g.refs++
	s.mu.Unlock()

	if wait {
		select {
		case g.ch <- struct{}{}:
			return true, nil
		case <-ctx.Done():
		}
	} else {
		select {
		case g.ch <- struct{}{}:
			return true, nil
		default:
		}
	}
	s.dropGate(name, g)
	return false, ctx.Err()
}

// leave releases the gate taken by enter.
func (s *Storage) leave(name string) {
	s.mu.Lock()
	g := s.gates[name]
	s.mu.Unlock()
	<-g.ch
	s.dropGate(name, g)
}

func (s *Storage) dropGate(name string, g *gate) {
	s.mu.Lock()
	g.refs--
	if g.refs == 0 {
		delete(s.gates, name)
	}
	s.mu.Unlock()
}

// newSession grants a lease with a bounded request and starts its
// keepalive. (concurrency.NewSession would grant with the client's
// unbounded context.)
func (s *Storage) newSession(ctx context.Context) (*concurrency.Session, error) {
	octx, cancel := s.opCtx(ctx)
	lease, err := s.client.Grant(octx, int64(s.ttlSeconds))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("granting %ds lease: %w", s.ttlSeconds, err)
	}
	sess, err := concurrency.NewSession(s.client,
		concurrency.WithLease(lease.ID),
		concurrency.WithTTL(s.ttlSeconds),
		concurrency.WithContext(s.ctx))
	if err != nil {
		s.revoke(lease.ID)
		return nil, fmt.Errorf("starting lease keepalive: %w", err)
	}
	return sess, nil
}

// endSession stops a session's keepalive and revokes its lease, which
// deletes its lock key. If the revoke fails, the lease (and the lock) still
// expires within LockTTL because nothing renews it any more.
func (s *Storage) endSession(sess *concurrency.Session) error {
	sess.Orphan()
	return s.revoke(sess.Lease())
}

func (s *Storage) revoke(id clientv3.LeaseID) error {
	// Not the caller's context: a release must be attempted even when the
	// caller's context is already done (certmagic passes WithoutCancel).
	ctx, cancel := s.opCtx(context.Background())
	defer cancel()
	_, err := s.client.Revoke(ctx, id)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return nil // already expired: the lock is released
	}
	return err
}

// Lock blocks until it holds the lock for name or ctx ends. A lock whose
// holder crashed becomes free within LockTTL. Errors (etcd unreachable for
// RequestTimeout, lease lost while waiting) are returned, not retried
// forever, so certmagic can log them and retry its operation later.
func (s *Storage) Lock(ctx context.Context, name string) error {
	safe, err := s.lockName("lock", name)
	if err != nil {
		return err
	}
	if _, err := s.enter(ctx, safe, true); err != nil {
		return fmt.Errorf("etcdstore: lock %q: %w", name, err)
	}
	if err := s.acquire(ctx, safe, true); err != nil {
		s.leave(safe)
		return fmt.Errorf("etcdstore: lock %q: %w", name, err)
	}
	return nil
}

// TryLock takes the lock for name if it is free and reports whether it did,
// without waiting for a holder.
func (s *Storage) TryLock(ctx context.Context, name string) (bool, error) {
	safe, err := s.lockName("trylock", name)
	if err != nil {
		return false, err
	}
	ok, err := s.enter(ctx, safe, false)
	if err != nil {
		return false, fmt.Errorf("etcdstore: trylock %q: %w", name, err)
	}
	if !ok {
		return false, nil // held by another goroutine of this Storage
	}
	err = s.acquire(ctx, safe, false)
	if errors.Is(err, concurrency.ErrLocked) {
		s.leave(safe)
		return false, nil
	}
	if err != nil {
		s.leave(safe)
		return false, fmt.Errorf("etcdstore: trylock %q: %w", name, err)
	}
	return true, nil
}

// acquire takes the etcd mutex for safe with a fresh session, waiting for
// the holder when wait, and records it in s.held. The caller holds the
// gate. On failure the session is ended, which removes any waiter key.
func (s *Storage) acquire(ctx context.Context, safe string, wait bool) error {
	sess, err := s.newSession(ctx)
	if err != nil {
		return err
	}
	pfx := s.lockRoot + safe
	m := concurrency.NewMutex(sess, pfx)
	for {
		last := time.Now()
		octx, cancel := s.opCtx(ctx)
		err = m.TryLock(octx)
		cancel()
		if err == nil {
			break
		}
		if !wait || !errors.Is(err, concurrency.ErrLocked) {
			s.endSession(sess)
			return err
		}
		if err = s.waitForRelease(ctx, sess, pfx+"/"); err != nil {
			s.endSession(sess)
			return err
		}
		if d := lockRetryFloor - time.Since(last); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				s.endSession(sess)
				return ctx.Err()
			}
		}
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.endSession(sess)
		return errors.New("storage closed while locking")
	}
	s.held[safe] = &heldLock{session: sess, mutex: m}
	s.mu.Unlock()
	return nil
}

// waitForRelease waits, for at most lockWatchWindow, until the current
// holder's key under pfx is deleted (released, or its lease expired). It
// returns nil when the caller should try again, or the reason to give up.
func (s *Storage) waitForRelease(ctx context.Context, sess *concurrency.Session, pfx string) error {
	octx, cancel := s.opCtx(ctx)
	resp, err := s.client.Get(octx, pfx, clientv3.WithFirstCreate()...)
	cancel()
	if err != nil {
		return fmt.Errorf("finding lock holder: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil // released meanwhile
	}
	holder := string(resp.Kvs[0].Key)

	wctx, wcancel := context.WithTimeout(ctx, lockWatchWindow)
	defer wcancel()
	// Watch from just after the read, so a delete in between is seen.
	wch := s.client.Watch(clientv3.WithRequireLeader(wctx), holder, clientv3.WithRev(resp.Header.Revision+1))
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			return errors.New("lease expired while waiting (etcd unreachable for longer than the lock TTL?)")
		case wr, ok := <-wch:
			if !ok {
				return nil // window over; try again
			}
			if err := wr.Err(); err != nil {
				// Compaction, lost leader: the next try re-reads the state.
				return nil
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					return nil
				}
			}
		}
	}
}

// Unlock releases the lock for name taken by this Storage: it deletes this
// call's own mutex key and revokes its own lease. Unlocking a name this
// Storage does not hold is an error and touches nothing. If etcd cannot be
// reached, the lease is no longer renewed, so the lock still expires within
// LockTTL; the error says so.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	safe, err := s.lockName("unlock", name)
	if err != nil {
		return err
	}
	s.mu.Lock()
	h := s.held[safe]
	delete(s.held, safe)
	s.mu.Unlock()
	if h == nil {
		return fmt.Errorf("etcdstore: unlock %q: not locked by this storage", name)
	}
	defer s.leave(safe)

	// The caller's context may already be done; release anyway.
	octx, cancel := s.opCtx(context.WithoutCancel(ctx))
	delErr := h.mutex.Unlock(octx)
	cancel()
	revErr := s.endSession(h.session)
	if delErr != nil && revErr != nil {
		return fmt.Errorf("etcdstore: unlock %q: %w (the lock expires by itself within %ds)", name, errors.Join(delErr, revErr), s.ttlSeconds)
	}
	return nil
}

// RenewLockLease is called by certmagic between retries of a long
// operation. The lease is renewed continuously while this Storage lives, so
// leaseDuration needs no action; instead this verifies that the lock is
// still held (the lease did not expire during an etcd outage and the key is
// still ours) and renews the lease once more. An error tells certmagic to
// stop working under a lock it may have lost.
func (s *Storage) RenewLockLease(ctx context.Context, lockKey string, leaseDuration time.Duration) error {
	safe, err := s.lockName("renew lock lease", lockKey)
	if err != nil {
		return err
	}
	s.mu.Lock()
	h := s.held[safe]
	s.mu.Unlock()
	if h == nil {
		return fmt.Errorf("etcdstore: renew lock lease %q: not locked by this storage", lockKey)
	}
	select {
	case <-h.session.Done():
		return fmt.Errorf("etcdstore: renew lock lease %q: lease expired; the lock may be held elsewhere", lockKey)
	default:
	}
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	if _, err := s.client.KeepAliveOnce(octx, h.session.Lease()); err != nil {
		return fmt.Errorf("etcdstore: renew lock lease %q: %w", lockKey, err)
	}
	resp, err := s.client.Txn(octx).If(h.mutex.IsOwner()).Commit()
	if err != nil {
		return fmt.Errorf("etcdstore: renew lock lease %q: %w", lockKey, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("etcdstore: renew lock lease %q: lock key is gone; the lock may be held elsewhere", lockKey)
	}
	return nil
}
