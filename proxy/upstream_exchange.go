package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
)

// One exchange with an http:// or https:// upstream through the own
// HTTP/1.1 client (upstream_h1client.go), shared by the engines whose requests
// do not arrive as HTTP/1.1 bytes: an HTTP/2 stream (upstream_from_h2.go) and an
// HTTP/3 request (upstream_from_h3.go). The engine builds the request head
// (upHeadBuilder), and exchangeUp does the rest the same way for both:
// pick / skip / retry, passive health, PROXY-protocol pinning to the
// client connection, the early response, 1xx; the engine's upClient
// moves the bytes to and from its client. A failure is answered by
// answerFailure (502/504/408, or nothing when the client went away).

// upClient is an engine's side of an exchange.
type upClient interface {
	// attach makes uc the exchange's connection: the client going away
	// breaks off its reads and writes. false: the client is gone.
	attach(uc *upConn) bool
	// detach ends attach; true: the client went away meanwhile and
	// broke uc (not reusable).
	detach() bool
	// sendBody streams the rest of the request body to uc, framed as
	// the head declared it (bodyLen; -1: chunked). A client failure is
	// a *clientBodyError.
	sendBody(uc *upConn, bodyLen int64) error
	// interim relays an informational head (not 100, not 101).
	interim(resp *h1wire.ResponseHead)
	// relay sends the final response and ends the exchange's use of uc
	// (uc.done, up.active).
	relay(rs *routeState, up *upstream, uc *upConn, resp *h1wire.ResponseHead, head bool)
}

// upRequest is what exchangeUp sends.
type upRequest struct {
	rc         *replayConn // the client connection (PROXY-protocol pinning)
	out        []byte      // the request head, with the whole body when it was here already
	stream     bool        // more body follows out (sendBody)
	bodyLen    int64       // the body's framing in out's head (-1: chunked)
	method     []byte
	respHeader time.Duration // [timeouts] upstream_response_header
}

// exchangeUp sends q to an upstream of rs and relays the answer through
// cl; an error means nothing (or not all) was answered yet: the caller
// answers it with answerFailure. The upstream is the one that answered
// or failed last (nil when none was tried).
func exchangeUp(rs *routeState, cl upClient, q *upRequest) (*upstream, error) {
	retryable := !q.stream && idempotent(q.method)
	var skip tried
	var lastErr error
	retried := false
	for {
		up := rs.bal.pick(skip)
		if up == nil {
			if lastErr == nil {
				lastErr = errNoUpstream
			}
			return nil, lastErr
		}
		up.active.Add(1)
		var uc *upConn
		var err error
		switch {
		case rs.ppVersion != 0:
			uc, err = pinnedConn(q.rc, rs, up, retried)
		case retried:
			uc, err = dialUp(rs, up, up.pool, nil)
		default:
			uc, err = up.pool.get(rs, up)
		}
		if err != nil {
			up.active.Add(-1)
			rs.upstreamFailed(up, err)
			lastErr = &upstreamError{up: up, err: err}
			skip.add(rs.bal.index(up))
			rs.log.Debug("upstream unreachable; trying another", "upstream", up.Raw, "error", err)
			continue
		}
		if !cl.attach(uc) {
			uc.done(false)
			up.active.Add(-1)
			return up, context.Canceled
		}
		err = uc.write(q.out)
		if err == nil && q.stream {
			err = cl.sendBody(uc, q.bodyLen)
		}
		var resp *h1wire.ResponseHead
		early := false
		// (uc.write and copyBodyUp return the *upWriteError itself: a
		// type check, where errors.As would cost an allocation per
		// exchange)
		if _, ok := err.(*upWriteError); ok {
			// the upstream may have answered and closed before taking
			// the whole request (a 413, a redirect): relay that answer
			// (the engine then stops the rest of the upload), as nginx
			// does, instead of a 502
			if r, rerr := uc.readHead(time.Now().Add(q.respHeader)); rerr == nil {
				resp, err, early = r, nil, true
			}
		} else if err == nil {
			resp, err = uc.readHead(time.Now().Add(q.respHeader))
		}
		for err == nil && resp.Status < 200 {
			if resp.Status == 101 {
				err = errors.New("101 Switching Protocols to a request without Upgrade")
				break
			}
			if resp.Status != 100 { // 103 Early Hints …: relayed (100: the body read sends it)
				cl.interim(resp)
			}
			resp, err = uc.readHead(time.Now().Add(q.respHeader))
		}
		if err == nil {
			resp.Close = resp.Close || early
			cl.relay(rs, up, uc, resp, string(q.method) == "HEAD")
			return up, nil
		}
		broken := cl.detach()
		again := uc.retryable() // before done, which starts the next exchange's count
		uc.done(false)
		up.active.Add(-1)
		var cbe *clientBodyError
		if errors.As(err, &cbe) {
			return up, err // the client's body failed: answerFailure tells a stall (408) from a reset
		}
		if broken {
			return up, context.Canceled // the client went away or reset the stream
		}
		if again && retryable && !retried {
			// a pooled connection the upstream had closed: once more on a new one
			retried = true
			rs.log.Debug("pooled upstream connection was closed; retrying on a new one", "upstream", up.Raw, "error", err)
			continue
		}
		rs.upstreamFailed(up, err)
		return up, &upstreamError{up: up, err: err}
	}
}

// copyBodyUp streams body to uc as the head declared it: as is for a
// Content-Length (bodyLen >= 0), else chunked; first (bytes read ahead)
// goes before what body still has. buf is the copy buffer. A read
// failure is a *clientBodyError.
func copyBodyUp(uc *upConn, first []byte, body io.Reader, bodyLen int64, buf []byte) error {
	if len(first) > 0 {
		if err := writeBodyUp(uc, first, bodyLen < 0, buf); err != nil {
			return err
		}
	}
	for {
		n, err := body.Read(buf[h1wire.ChunkHeaderMax : len(buf)-2])
		if n > 0 {
			if werr := writeBodyUp(uc, buf[h1wire.ChunkHeaderMax:h1wire.ChunkHeaderMax+n], bodyLen < 0, buf); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			if bodyLen < 0 {
				return uc.write([]byte("0\r\n\r\n"))
			}
			return nil
		}
		if err != nil {
			return &clientBodyError{err}
		}
	}
}

// writeBodyUp writes data (in buf at h1wire.ChunkHeaderMax, or elsewhere) as is, or
// as one chunk: the chunk-size line goes right before the data in buf.
func writeBodyUp(uc *upConn, data []byte, chunked bool, buf []byte) error {
	if !chunked {
		return uc.write(data)
	}
	for len(data) > 0 {
		n := copy(buf[h1wire.ChunkHeaderMax:len(buf)-2], data) // a no-op when data is there already
		data = data[n:]
		var hex [h1wire.ChunkHeaderMax]byte
		h := h1wire.AppendHex(hex[:0], uint64(n))
		h = append(h, '\r', '\n')
		start := h1wire.ChunkHeaderMax - len(h)
		copy(buf[start:], h)
		if err := uc.write(append(buf[start:h1wire.ChunkHeaderMax+n], '\r', '\n')); err != nil {
			return err
		}
	}
	return nil
}

// upHeadBuilder fills the h1wire.RequestHead an HTTP/2 or HTTP/3 request sends
// upstream (appendUpstreamHead writes it): its fields less what
// HTTP/1.1 gets otherwise (cookies joined into one field, RFC 9113
// §8.2.3 / RFC 9114 §4.2.1; Host from the :authority; Expect answered
// by gatehouse itself).
type upHeadBuilder struct {
	req     h1wire.RequestHead
	cookies []string
}

func (b *upHeadBuilder) start(method, path, authority string, n int) {
	b.req = h1wire.RequestHead{Method: bstr(method), Target: bstr(path), Host: bstr(authority), ContentLength: -1}
	b.req.Fields = make([]h1wire.Field, 0, n)
}

// add adds one field (a pseudo-field is not passed).
func (b *upHeadBuilder) add(name, value string) {
	switch len(name) {
	case 4:
		if h1wire.EqFold(bstr(name), "host") {
			return
		}
	case 6:
		if h1wire.EqFold(bstr(name), "expect") || h1wire.EqFold(bstr(name), "cookie") && b.cookie(value) {
			return
		}
	}
	b.req.Fields = append(b.req.Fields, h1wire.Field{Name: bstr(name), Value: bstr(value)})
}

func (b *upHeadBuilder) cookie(v string) bool {
	b.cookies = append(b.cookies, v)
	return true
}

// finish returns the head; noBody: the request has no body.
func (b *upHeadBuilder) finish(noBody bool) h1wire.RequestHead {
	switch len(b.cookies) {
	case 0:
	case 1:
		b.req.Fields = append(b.req.Fields, h1wire.Field{Name: []byte("cookie"), Value: bstr(b.cookies[0])})
	default:
		var v []byte
		for i, c := range b.cookies {
			if i > 0 {
				v = append(v, "; "...)
			}
			v = append(v, c...)
		}
		b.req.Fields = append(b.req.Fields, h1wire.Field{Name: []byte("cookie"), Value: v})
	}
	if noBody {
		switch string(b.req.Method) {
		case "POST", "PUT", "PATCH":
			b.req.ContentLength = 0 // as the Transport sent them: Content-Length: 0
		}
	}
	return b.req
}

// fwdCached returns a client connection's forwarding fields for host:
// built once per connection and Host, then shared read-only by its
// requests.
func fwdCached(p *atomic.Pointer[fwdInfo], addr, host string) *fwdInfo {
	if f := p.Load(); f != nil && string(f.host) == host {
		return f
	}
	f := new(fwdInfo)
	f.set(addr, []byte(host))
	p.Store(f)
	return f
}

// failedUpstream is the upstream an upstreamError names, or nil.
func failedUpstream(err error) *upstream {
	var ue *upstreamError
	if errors.As(err, &ue) {
		return ue.up
	}
	return nil
}

// answerFailure answers a failed exchange, for every engine: nothing
// when the client went away (canceled, or its body failed), 408 when its body stopped
// arriving ([timeouts] client_body), else 502 (504 on a timeout) with a
// short plain body that leaks nothing internal; the details go to the
// log with the route, upstream and client. false: nothing was answered.
func (rs *routeState) answerFailure(w http.ResponseWriter, canceled bool, up *upstream, err error, method, path, client string) bool {
	reqs, addr := &rs.metrics.none, ""
	if up != nil {
		reqs, addr = &up.reqs, up.Raw
	}
	timedOut := errors.Is(err, errClientBodyTimeout)
	var cbe *clientBodyError
	if canceled || !timedOut && errors.As(err, &cbe) {
		reqs[classCanceled].Inc()
		rs.log.Debug("client canceled request", "upstream", addr, "path", path, "client", client)
		return false
	}
	status, body := http.StatusBadGateway, "502 Bad Gateway: the upstream server is unavailable\n"
	var ne net.Error
	switch {
	case timedOut:
		status, body = http.StatusRequestTimeout, "408 Request Timeout: the request body stopped arriving\n"
	case errors.As(err, &ne) && ne.Timeout():
		status, body = http.StatusGatewayTimeout, "504 Gateway Timeout: the upstream server did not answer in time\n"
	}
	reqs[classOf(status)].Inc()
	switch {
	case timedOut:
		rs.log.Debug("client request body timed out", "method", method, "path", path, "client", client)
	case errors.Is(err, errNoUpstream):
		// every upstream is marked down; the transitions were logged
		rs.log.Debug("no healthy upstream", "method", method, "path", path, "client", client)
	default:
		rs.log.Warn("upstream request failed", "upstream", addr, "method", method, "path", path,
			"client", client, "status", status, "error", err)
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
	return true
}
