package tlsconfig

import (
	"context"
	"crypto/tls"
	"sync"
	"sync/atomic"
)

// Index readiness. Apply hands the names it manages to a background job
// (manage) that lists storage and puts the names with a stored
// certificate into the lazy index (lazy.go). Until that listing is done
// (0.4–0.8 s at 100,000 names) a stored name is neither cached nor
// pending, and a handshake for it found nothing: a TLS internal_error
// for a name whose certificate is right there in storage. indexing
// counts the index builds in flight, from Apply (before it returns, so
// before any handshake can see the new names) to the end of the
// listing; a handshake whose name has no cached certificate while one is
// in flight waits for it, at most the handshake timeout, then looks in
// the index again.

// indexing is the set of index builds in flight.
type indexing struct {
	busy   atomic.Int32 // builds in flight: the handshake path reads only this
	warned atomic.Bool  // a handshake gave up waiting (logged once per build)

	mu   sync.Mutex
	idle chan struct{} // closed when the builds in flight are done
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// begin records a build that is about to start.
func (g *indexing) begin() {
	g.mu.Lock()
	if g.busy.Load() == 0 {
		g.idle = make(chan struct{})
		g.warned.Store(false)
	}
	g.busy.Add(1)
	g.mu.Unlock()
}

// end records that a build begun with begin is done.
func (g *indexing) end() {
	g.mu.Lock()
	if g.busy.Add(-1) == 0 {
		close(g.idle)
	}
	g.mu.Unlock()
}

// done returns a channel closed when no build is in flight.
func (g *indexing) done() <-chan struct{} {
	if g.busy.Load() == 0 {
		return closedChan
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.busy.Load() == 0 {
		return closedChan
	}
	return g.idle
}

// awaitIndexed waits, for a handshake whose name has no certificate in
// the cache, until the index builds in flight are done, at most the
// handshake timeout. It reports whether it waited for one (then the
// name may be in the index now).
func (m *Manager) awaitIndexed(hello *tls.ClientHelloInfo, name string) bool {
	if m.indexing.busy.Load() == 0 {
		return false
	}
	limit := m.handshakeTimeout()
	parent := hello.Context()
	if parent == nil { // a ClientHelloInfo not made by crypto/tls
		parent = context.Background()
	}
	ctx, cancel := context.WithTimeout(parent, limit)
	defer cancel()
	select {
	case <-m.indexing.done():
	case <-ctx.Done():
		if m.indexing.warned.CompareAndSwap(false, true) { // not once per handshake
			m.log.Warn("handshakes are giving up waiting for the index of stored certificates (storage slow to list?)", "name", name, "error", ctx.Err())
		}
	}
	return true
}
