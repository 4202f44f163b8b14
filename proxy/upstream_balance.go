package proxy

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// Passive health: an upstream that fails passiveFails times in a row
// (a refused or timed-out dial, or an exchange that broke before a
// response) is skipped for passiveCooldown. When the cooldown ends it
// gets traffic again, and a single further failure puts it back out
// (the failure count is reset only by a success), so a dead upstream
// costs at most one failed dial per cooldown — and that dial's request
// is retried on another upstream.
//
// A route with a single upstream is never skipped passively (as in
// nginx): there is no other upstream to send the traffic to, and a
// cooldown would only turn an upstream's quick restart into several
// seconds of 502s after it is back.
const (
	passiveFails    = 3
	passiveCooldown = 5 * time.Second
)

// errNoUpstream is returned when every upstream of a route is marked
// down: the request gets a 502 at once, without dialing any of them.
// Recovery comes from the active checker (next interval) or from the
// end of a passive cooldown; there is no extra "probe" dial, so the
// answer stays fast however many requests arrive while all are down.
var errNoUpstream = errors.New("no healthy upstream")

// upstream is one backend address of a route, with its balancing and
// health state.
type upstream struct {
	routes.Upstream
	target *url.URL // for the reverse proxy: scheme http or https
	pool   *upPool  // the fast path's idle connections to this address (engine_h1.go)

	active    atomic.Int64 // requests and streams in flight (least_conn)
	fails     atomic.Int32 // consecutive failures (passive)
	downUntil atomic.Int64 // unix nanoseconds; passive cooldown end
	checkDown atomic.Bool  // the active checker says down

	reqs [numClasses]counter // gatehouse_http_requests_total children
}

// usable reports whether the balancer may choose u now.
func (u *upstream) usable(now int64) bool {
	return !u.checkDown.Load() && now >= u.downUntil.Load()
}

// usableNow is usable at this moment; an upstream never put into a
// passive cooldown needs no clock read.
func (u *upstream) usableNow() bool {
	if u.checkDown.Load() {
		return false
	}
	d := u.downUntil.Load()
	return d == 0 || time.Now().UnixNano() >= d
}

// healthy is usable at this moment, for the metric and logs.
func (u *upstream) healthy() bool { return u.usable(time.Now().UnixNano()) }

// succeeded records a working exchange or connection.
func (u *upstream) succeeded() {
	if u.fails.Load() != 0 {
		u.fails.Store(0)
	}
}

// failed records a failure; it reports whether the upstream was just
// put into cooldown.
func (u *upstream) failed(passive bool) bool {
	n := u.fails.Add(1)
	if !passive || n < passiveFails {
		return false
	}
	now := time.Now().UnixNano()
	if u.downUntil.Load() > now {
		return false // already out
	}
	u.downUntil.Store(now + int64(passiveCooldown))
	return true
}

// balancer picks upstreams for a route.
type balancer struct {
	ups       []*upstream
	leastConn bool
	passive   bool          // passive health applies (more than one upstream)
	next      atomic.Uint64 // rotating start: round robin, and least_conn ties
}

// tried is the set of upstreams (by index) a request already failed on.
type tried uint64

func (t tried) has(i int) bool { return t&(1<<uint(i)) != 0 }
func (t *tried) add(i int)     { *t |= 1 << uint(i) }
func (b *balancer) index(u *upstream) int {
	for i, x := range b.ups {
		if x == u {
			return i
		}
	}
	return -1
}

// pick chooses the upstream for the next request or stream, skipping
// those marked down and those in skip; nil when none is left.
func (b *balancer) pick(skip tried) *upstream {
	n := len(b.ups)
	if n == 1 {
		u := b.ups[0]
		if skip != 0 || !u.usableNow() {
			return nil
		}
		return u
	}
	now := time.Now().UnixNano()
	start := int(b.next.Add(1) % uint64(n))
	var best *upstream
	var bestLoad int64
	for k := range n {
		i := start + k
		if i >= n {
			i -= n
		}
		if skip.has(i) {
			continue
		}
		u := b.ups[i]
		if !u.usable(now) {
			continue
		}
		if !b.leastConn {
			return u
		}
		if load := u.active.Load(); best == nil || load < bestLoad {
			best, bestLoad = u, load
		}
	}
	return best
}

// upstreamFailed records a failed dial or exchange with up, and logs
// the moment passive health takes it out of rotation.
func (rs *routeState) upstreamFailed(up *upstream, err error) {
	if up.failed(rs.bal.passive) {
		rs.log.Warn("upstream out of rotation after consecutive failures", "upstream", up.Raw,
			"failures", passiveFails, "cooldown", passiveCooldown, "error", err)
	}
}

// upstreamError is a failed exchange with a known upstream.
type upstreamError struct {
	up  *upstream
	err error
}

func (e *upstreamError) Error() string { return e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

// RoundTrip makes routeState the reverse proxy's transport: it picks an
// upstream per attempt, and when the connection to one could not be
// made (a dial error: not a byte was sent) it tries the next one not
// yet tried. That holds for every method, as with nginx's
// proxy_next_upstream: a request that never reached an upstream cannot
// have had an effect there. An exchange that failed after the
// connection was made is not retried here (the standard transport
// already retries idempotent requests on a reused connection the
// upstream had closed).
func (rs *routeState) RoundTrip(req *http.Request) (*http.Response, error) {
	var tr http.RoundTripper = rs.transport
	if rs.ppVersion != 0 {
		p, err := rs.pinnedTransport(req)
		if err != nil {
			return nil, err
		}
		tr = p
	}
	var body *retryBody
	if len(rs.bal.ups) > 1 && req.Body != nil && req.Body != http.NoBody {
		body = &retryBody{ReadCloser: req.Body}
		req.Body = body
	}
	var skip tried
	var last *upstreamError
	for {
		up := rs.bal.pick(skip)
		if up == nil {
			if last != nil {
				return nil, last
			}
			return nil, errNoUpstream
		}
		req.URL.Host = up.target.Host
		noteUpstream(req.Context(), up)
		up.active.Add(1)
		res, err := tr.RoundTrip(req)
		if err == nil {
			up.succeeded()
			up.reqs[classOf(res.StatusCode)].Inc()
			if rs.bal.leastConn {
				res.Body = &doneBody{ReadCloser: res.Body, up: up}
			} else {
				up.active.Add(-1)
			}
			return res, nil
		}
		up.active.Add(-1)
		if req.Context().Err() != nil || errors.Is(err, errClientBodyTimeout) {
			return nil, err // the client went away or stalled: not the upstream's fault
		}
		rs.upstreamFailed(up, err)
		last = &upstreamError{up: up, err: err}
		var de *dialError
		if !errors.As(err, &de) || body != nil && body.started {
			return nil, last
		}
		skip.add(rs.bal.index(up))
		rs.log.Debug("upstream unreachable; trying another", "upstream", up.Raw, "error", err)
	}
}

// retryBody keeps a request body usable for a retry: the transport
// closes the body of a request whose dial failed, so Close is held
// back until the body has started to be sent (after that there is no
// retry; the server closes the body when the handler returns anyway).
type retryBody struct {
	io.ReadCloser
	started bool
}

func (b *retryBody) Read(p []byte) (int, error) {
	b.started = true
	return b.ReadCloser.Read(p)
}

func (b *retryBody) Close() error {
	if b.started {
		return b.ReadCloser.Close()
	}
	return nil
}

// doneBody counts a least_conn upstream's request as in flight until
// its response body is closed, so long streams (server-sent events,
// downloads) weigh on the choice as they should.
type doneBody struct {
	io.ReadCloser
	up   *upstream
	once sync.Once
}

// Write passes through for a 101 Switching Protocols response, whose
// body is the upstream connection itself (WebSocket).
func (b *doneBody) Write(p []byte) (int, error) {
	w, ok := b.ReadCloser.(io.Writer)
	if !ok {
		return 0, errors.New("response body is not writable")
	}
	return w.Write(p)
}

func (b *doneBody) Close() error {
	b.once.Do(func() { b.up.active.Add(-1) })
	return b.ReadCloser.Close()
}
