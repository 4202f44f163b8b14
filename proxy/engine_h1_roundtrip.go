package proxy

import (
	"context"
	"errors"
	"fmt"
	"github.com/gatehouse-proxy/gatehouse/proxy/internal/httpfield"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
)

// An HTTP/1.1 request on a route whose upstreams the own client does
// not speak to (h2c://, https://; nativeUpstreams in engine_h1.go): the
// exchange goes through the route's RoundTrip (upstream_balance.go: pick, skip,
// retry, passive health, PROXY-protocol pinning) with an http.Request
// built from the parsed head, as the HTTP/2 server's streams do
// (engine_h2.go). Everything else is the HTTP/1.1 server's own: the
// Host check and 421 (serveRequest), the forwarding fields and
// hop-by-hop removal (isReqHop, forwardRequest), the request body
// framing with [timeouts] client_body, the response head (hop-by-hop
// fields dropped, HSTS, Alt-Svc, Date, HEAD/204/304 framing: the same
// appendOwnFields), trailers, 1xx relaying, [timeouts] send, the
// 502/504/408 answers (fail, clientBodyFailed) and the access-log
// record (serveRequest).
//
// The Transport reads the request body and delivers 1xx heads from
// goroutines of its own while serveRequest's goroutine waits in
// RoundTrip: rtExchange is what they share. mu guards the client's read
// side (c.br, the body's framing state) — the body reader and the
// client watch take turns on it —, wmu the client writes made before
// the final head (1xx, a 100 Continue of gatehouse's own). Once the
// final head is being written (final), only serveRequest's goroutine
// writes.

// rtExchange is one request's exchange through RoundTrip.
type rtExchange struct {
	c          *h1conn
	clientBody time.Duration
	expect     bool // the client sent Expect: 100-continue and takes a 100 (HTTP/1.1)
	minor      int
	cancel     context.CancelFunc

	wmu     sync.Mutex
	final   bool // the final head is written: 1xx come too late
	sent100 bool
	n1xx    int

	mu        sync.Mutex
	body      bool // the request has a body
	f         h1wire.BodyFramer
	pending   []byte // body bytes taken from c.br, not yet read by the Transport
	bodyErr   error
	detached  bool         // the exchange is over: the body is not read any more
	detaching atomic.Bool  // set before the read deadline is moved to now
	complete  atomic.Bool  // the whole body was read
	length    int64        // a Content-Length body's length; -1: chunked
	taken     atomic.Int64 // body bytes Read has given out
	timedOut  atomic.Bool  // client_body ran out

	stop, watched chan struct{}
}

var errBodyDetached = errors.New("the request's exchange is over")

// Read gives the Transport the request body as the client sends it,
// decoded from its framing (the Transport frames it again for the
// upstream, a chunked body's trailers dropped as on the own path); each
// wait for more is bounded by [timeouts] client_body.
func (e *rtExchange) Read(p []byte) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.c
	for {
		switch {
		case e.detached:
			return 0, errBodyDetached
		case e.bodyErr != nil:
			return 0, e.bodyErr
		case len(e.pending) > 0:
			n := copy(p, e.pending)
			e.pending = e.pending[n:]
			e.taken.Add(int64(n))
			return n, nil
		case e.complete.Load():
			return 0, io.EOF
		}
		data, err := e.f.Next(&c.br)
		if err != nil {
			return 0, e.failBody(err)
		}
		if len(data) > 0 {
			e.pending = data
			// complete as soon as the last bytes are taken: an answer
			// that comes before the Transport reads its EOF leaves the
			// connection reusable
			e.complete.Store(e.f.Done)
			continue
		}
		if e.f.Done {
			e.complete.Store(true)
			continue
		}
		if e.expect {
			// the upstream wants the body (it answered 100 Continue, or
			// the Transport stopped waiting): the client is told to send
			e.wmu.Lock()
			if !e.final && !e.sent100 {
				e.sent100 = true
				if _, err := c.write([]byte("HTTP/1.1 100 Continue\r\n\r\n")); err != nil {
					e.wmu.Unlock()
					return 0, e.failBody(err)
				}
			}
			e.wmu.Unlock()
		}
		_ = c.tc.SetReadDeadline(time.Now().Add(e.clientBody))
		if e.detaching.Load() {
			return 0, errBodyDetached
		}
		if err := c.br.Fill(); err != nil {
			if e.detaching.Load() {
				return 0, errBodyDetached
			}
			if err == h1wire.ErrBufFull {
				err = h1wire.ErrBadChunk
			}
			return 0, e.failBody(err)
		}
	}
}

// Close is the Transport's; the exchange ends the body itself (detach).
func (e *rtExchange) Close() error { return nil }

// failBody records why the body could not be read and ends the wait
// for the upstream's answer: a client that stalls or leaves, or sends
// a malformed chunk, is not the upstream's failure (RoundTrip does not
// count it against the upstream's health when the request's context
// has ended). Once the final head is out the response goes on.
func (e *rtExchange) failBody(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		e.timedOut.Store(true)
		err = fmt.Errorf("%w: %w", errClientBodyTimeout, err)
	}
	e.bodyErr = err
	e.wmu.Lock()
	final := e.final
	e.wmu.Unlock()
	if !final {
		e.cancel()
	}
	return err
}

// got1xx relays an informational response (103 Early Hints …) to an
// HTTP/1.1 client, as the own path does, at most max1xx of them; a 100
// only once and only while the body has not been asked for.
func (e *rtExchange) got1xx(code int, h textproto.MIMEHeader) error {
	e.wmu.Lock()
	defer e.wmu.Unlock()
	if e.final {
		return nil
	}
	if e.n1xx++; e.n1xx > max1xx {
		return errTooMany1xx
	}
	if e.minor != 1 || code == 100 && e.sent100 {
		return nil
	}
	e.sent100 = e.sent100 || code == 100
	ob := h1wire.AppendStatus(make([]byte, 0, 256), code, http.StatusText(code))
	ob = appendHeader(ob, http.Header(h), "", false)
	ob = h1wire.AppendEndOfHead(ob)
	_, err := e.c.write(ob)
	return err
}

// watch checks every watchEvery, while the body is not being read,
// that the client is still connected (clientGone): a long poll or an
// event stream whose client left is given up, as on the own path.
func (e *rtExchange) watch() {
	defer close(e.watched)
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		e.mu.Lock()
		gone := false
		if (!e.body || e.complete.Load()) && !e.detached && e.bodyErr == nil {
			gone = e.c.clientGone()
		}
		e.mu.Unlock()
		if gone {
			e.cancel()
			return
		}
	}
}

// detach ends the exchange's use of the client's read side: the watch
// stops, a body read in progress returns, and the Transport reads no
// more. It reports whether the body was left unread (the connection
// then closes, after lingerBody).
func (e *rtExchange) detach() (bodyLeft bool) {
	close(e.stop)
	<-e.watched
	e.detaching.Store(true)
	if e.body {
		_ = e.c.tc.SetReadDeadline(time.Now())
	}
	e.mu.Lock()
	e.detached = true
	e.pending = nil
	e.mu.Unlock()
	return e.body && !e.complete.Load()
}

// roundTrip forwards c.req through x.rs.RoundTrip and relays the
// answer; ob is the (empty) output buffer, returned for the pool.
func (c *h1conn) roundTrip(snap *snapshot, x *exchange, ob []byte) []byte {
	rs := x.rs
	req := &c.req
	u, err := url.ParseRequestURI(string(req.Target))
	if err != nil {
		rs.metrics.none[classOf(400)].Inc()
		x.status, x.closeAfter = 400, true
		body := "400 Bad Request: malformed request target\n"
		x.bytes = int64(len(body))
		ob = appendSimple(ob, 400, body, true, "")
		_, _ = c.write(ob)
		return ob
	}
	// the client's end-to-end fields, as appendUpstreamHead forwards them
	h := make(http.Header, len(req.Fields)+6)
	te := false
	var upgrade string
	for _, f := range req.Fields {
		if isReqHop(f.Name, req.Conn) {
			switch {
			case h1wire.EqFold(f.Name, "te"):
				h1wire.ForEachToken(f.Value, func(tok []byte) {
					if h1wire.EqFold(tok, "trailers") {
						te = true
					}
				})
			case req.Upgrade && h1wire.EqFold(f.Name, "upgrade"):
				upgrade = string(f.Value)
			}
			continue
		}
		k := textproto.CanonicalMIMEHeaderKey(string(f.Name))
		h[k] = append(h[k], string(f.Value))
	}
	if te {
		h["Te"] = []string{"trailers"}
	}
	if upgrade != "" {
		h["Connection"] = []string{"Upgrade"}
		h["Upgrade"] = []string{upgrade}
	}
	if c.tlsState == nil {
		st := c.tc.ConnectionState()
		c.tlsState = &st
		if ip, _, err := net.SplitHostPort(c.remote); err == nil {
			c.xff = []string{ip}
		}
	}
	r := &http.Request{
		Method: string(req.Method), URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Host: string(req.Host), RemoteAddr: c.remote, RequestURI: string(req.Target), TLS: c.tlsState,
	}
	forwardRequest(r, rs, c.xff, &c.fwdRT)

	e := &rtExchange{c: c, clientBody: snap.tm.clientBody, minor: req.Minor, expect: req.Expect100 && req.Minor == 1,
		stop: make(chan struct{}), watched: make(chan struct{})}
	switch {
	case req.Chunked:
		e.body, e.length = true, -1
		e.f.Init(h1wire.BodyChunked, 0)
		r.ContentLength, r.Body = -1, e
	case req.ContentLength > 0:
		e.body, e.length = true, req.ContentLength
		e.f.Init(h1wire.BodyLength, req.ContentLength)
		r.ContentLength, r.Body = req.ContentLength, e
	}
	a := &accessRecord{} // RoundTrip notes the upstream it chose here
	ctx := context.WithValue(context.Background(), connKey{}, c.rc)
	ctx = context.WithValue(ctx, accessKey{}, a)
	ctx, e.cancel = context.WithCancel(ctx)
	defer e.cancel()
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got1xxResponse: e.got1xx})
	r = r.WithContext(ctx)

	go e.watch()
	res, err := rs.RoundTrip(r)
	x.up = a.upstream
	e.wmu.Lock()
	e.final = true
	e.wmu.Unlock()
	x.sent100 = e.sent100
	if err == nil && e.timedOut.Load() {
		// the upstream answered a request whose body stopped arriving:
		// the client gets the 408, as on every engine
		res.Body.Close()
		err = e.bodyErr
	}
	if err != nil {
		x.bodyLeft = e.detach()
		switch {
		case e.bodyErr != nil:
			return c.clientBodyFailed(x, ob, &clientBodyError{e.bodyErr})
		case ctx.Err() != nil:
			return c.clientBodyFailed(x, ob, &clientBodyError{errClientLeft})
		}
		return c.fail(x, ob, err)
	}
	return c.relayRT(x, e, res, ob)
}

// relayRT sends the upstream's response to the client: the head at
// once (a stream's first event must not wait for more), then the body
// as it arrives, chunked when its length is not known (HTTP/1.1; for
// HTTP/1.0 the close ends it), with the upstream's trailers.
func (c *h1conn) relayRT(x *exchange, e *rtExchange, res *http.Response, ob []byte) []byte {
	defer res.Body.Close()
	status := res.StatusCode
	x.status = status
	if status == 101 {
		return c.upgradeRT(x, e, res, ob)
	}
	// answered before the body was all read: the connection carries
	// another request only if the rest is small and comes soon after
	// (drain, below: the head does not promise a close then); a large
	// or chunked rest closes it, and the head says so, so the client
	// stops sending
	drainable := false
	if e.body && !e.complete.Load() {
		// (not under e.mu: the Transport may be in Read, waiting for
		// the client, which waits for this answer)
		drainable = e.length >= 0 && e.length-e.taken.Load() <= rtDrainMax
		if !drainable {
			x.closeAfter = true
		}
	}
	kind, n := h1wire.BodyNone, int64(-1)
	switch {
	case x.head || status == 204 || status == 304:
		if x.head {
			n = res.ContentLength // a HEAD response's Content-Length, as sent
		}
	case res.ContentLength >= 0 && len(res.Trailer) == 0:
		kind, n = h1wire.BodyLength, res.ContentLength
	default:
		kind = h1wire.BodyChunked
	}
	chunked := kind == h1wire.BodyChunked && c.req.Minor == 1
	if kind == h1wire.BodyChunked && !chunked {
		x.closeAfter = true // HTTP/1.0: the end of the body is the close
	}
	ob = h1wire.AppendStatus(ob, status, http.StatusText(status))
	ob = appendHeader(ob, res.Header, x.rs.hsts, false)
	if chunked && len(res.Trailer) > 0 {
		keys := make([]string, 0, len(res.Trailer))
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		ob = h1wire.AppendField(ob, "Trailer", strings.Join(keys, ", "))
	}
	_, date := res.Header["Date"]
	ob = c.appendOwnFields(ob, x, status, date, kind, n, chunked)
	if _, err := c.write(ob); err != nil {
		return c.abortRT(x, e, ob)
	}
	ob = ob[:0]
	if kind != h1wire.BodyNone && n != 0 {
		bp := buffers.Get().(*[]byte)
		defer buffers.Put(bp)
		buf := *bp
		for {
			k, rerr := res.Body.Read(buf)
			if k > 0 {
				x.bytes += int64(k)
				data := buf[:k]
				if chunked {
					ob = h1wire.AppendChunk(ob[:0], data)
					data = ob
				}
				if _, err := c.write(data); err != nil {
					return c.abortRT(x, e, ob)
				}
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				if !errors.Is(rerr, context.Canceled) {
					x.rs.log.Warn("upstream response broke off", "upstream", upstreamName(x.up), "method", c.logMethod(),
						"path", c.logTarget(), "client", c.remote, "error", rerr)
				}
				return c.abortRT(x, e, ob)
			}
		}
	}
	if chunked {
		ob = h1wire.AppendLastChunk(ob[:0], appendHeader(nil, res.Trailer, "", true))
		if _, err := c.write(ob); err != nil {
			return c.abortRT(x, e, ob)
		}
	}
	if drainable && !e.complete.Load() {
		// the upstream answered without taking the whole body (an
		// upstream that does not read it, or the Transport not yet
		// done writing it): what is left of a small one is read and
		// dropped, as nginx discards it, so the connection can carry
		// the next request
		e.drain(rtDrainMax, rtDrainWait)
	}
	if x.bodyLeft = e.detach(); x.bodyLeft {
		x.closeAfter = true
	}
	return ob[:0]
}

// What relayRT reads of a request body the upstream left unread, at
// most, to keep the connection: more, or slower, and it closes.
const (
	rtDrainMax  = 256 << 10
	rtDrainWait = time.Second
)

// drain reads and drops the rest of the request body, up to max bytes
// and each wait for more bounded by wait; e.complete tells whether it
// all came.
func (e *rtExchange) drain(max int64, wait time.Duration) {
	e.mu.Lock()
	e.clientBody = min(e.clientBody, wait)
	e.mu.Unlock()
	var buf [4096]byte
	for n := int64(0); n < max && !e.complete.Load(); {
		k, err := e.Read(buf[:])
		n += int64(k)
		if err != nil {
			return
		}
	}
}

// abortRT ends an exchange broken mid-response: the client connection
// closes (a truncated response, never a wrong one); the Transport's
// connection is given up by the deferred Body.Close.
func (c *h1conn) abortRT(x *exchange, e *rtExchange, ob []byte) []byte {
	e.cancel()
	x.bodyLeft = e.detach()
	x.closeAfter = true
	return ob[:0]
}

// upgradeRT relays a 101 Switching Protocols (a WebSocket to an
// https:// upstream) and pipes bytes both ways over the connection the
// Transport hands over as the response body. An h2c:// upstream never
// gets here: HTTP/2 has no Upgrade (RFC 9113 §8.6), and gatehouse does
// not send extended CONNECT, so the Transport refuses the request (502).
func (c *h1conn) upgradeRT(x *exchange, e *rtExchange, res *http.Response, ob []byte) []byte {
	up, ok := res.Body.(io.ReadWriteCloser)
	if !c.req.Upgrade || !ok {
		x.bodyLeft = e.detach()
		return c.fail(x, ob, &upstreamError{up: x.up, err: errors.New("101 Switching Protocols to a request without Upgrade")})
	}
	x.bodyLeft = e.detach() // (an upgrade request has no body)
	ob = h1wire.AppendStatus(ob, 101, "Switching Protocols")
	ob = appendHeader(ob, res.Header, "", false)
	if v := res.Header["Upgrade"]; len(v) > 0 {
		ob = h1wire.AppendField(ob, "Upgrade", v[0])
	}
	ob = c.appendOwnFields(ob, x, 101, true, h1wire.BodyNone, -1, false)
	if _, err := c.write(ob); err != nil {
		return c.abortRT(x, e, ob)
	}
	if n := c.br.Buffered(); n > 0 {
		if _, err := up.Write(c.br.Buf[c.br.R:c.br.W]); err != nil {
			return c.abortRT(x, e, ob)
		}
	}
	c.br.Release()
	x.closeAfter = true
	c.putOut(ob)
	c.tunnel(up, func() { up.Close() })
	return nil
}

// appendHeader appends the fields of h as field lines, less those of a
// single connection (hop-by-hop, and those its Connection field names),
// Content-Length (the framing is the client's: appendOwnFields), and
// the upstream's Strict-Transport-Security when the route sets its own
// (hsts). Trailers (trailer) keep every field but the hop-by-hop ones.
func appendHeader(ob []byte, h http.Header, hsts string, trailer bool) []byte {
	conn := h["Connection"]
	for k, vs := range h {
		if httpfield.HopByHop(k) || len(conn) > 0 && httpfield.ConnListed(conn, k) ||
			!trailer && (k == "Content-Length" || hsts != "" && k == "Strict-Transport-Security") {
			continue
		}
		for _, v := range vs {
			ob = h1wire.AppendField(ob, k, v)
		}
	}
	return ob
}

func upstreamName(up *upstream) string {
	if up == nil {
		return ""
	}
	return up.Raw
}
