package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h2server"
)

// An HTTP/2 stream's exchange with an http:// or https:// upstream
// through gatehouse's own HTTP/1.1 client (upstream_h1client.go), as the HTTP/1.1 fast
// path (engine_h1.go) does it: the stream's goroutine writes the request head
// (and a small body) in one write and reads the response itself, with
// no Transport read/write loop goroutines and no http.Request. With
// PROXY protocol to the upstreams, the connections are pinned to the
// client connection (pinnedConn, proxyproto.go).

// bstr views s as bytes without a copy; the bytes are only read.
func bstr(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// h2Up is a stream as the exchange's upClient sees it: the same
// memory as the h2server.Stream (a conversion, not an allocation per
// stream), with the proxy's methods.
type h2Up h2server.Stream

func (x *h2Up) st() *h2server.Stream { return (*h2server.Stream)(x) }

// conn is the stream's connection's Handler.
func (x *h2Up) conn() *h2Conn { return x.st().Conn().Handler().(*h2Conn) }

// fwdFor returns the connection's forwarding fields for host.
func (c *h2Conn) fwdFor(host string) *fwdInfo { return fwdCached(&c.fwdUp, c.addr, host) }

// upHead is the request as appendUpstreamHead writes it (upHeadBuilder).
func upHeadH2(in *h2server.Request, fields []h1wire.Field) h1wire.RequestHead {
	var b upHeadBuilder
	b.startIn(in.Method, in.Path, in.Authority, fields)
	for _, f := range in.Fields {
		if !f.IsPseudo() {
			b.add(f.Name, f.Value)
		}
	}
	return b.finish(in.EndStream || in.ContentLength == 0)
}

// upFields are field lists for upHead: one allocated per stream was one
// of the engine's allocations per request.
var upFields = sync.Pool{New: func() any { f := make([]h1wire.Field, 0, 32); return &f }}

// attach makes uc the stream's upstream connection: a reset of the
// stream then breaks off its reads and writes at once (Interrupt).
// false: the stream has ended already.
func (x *h2Up) attach(uc *upConn) bool { return x.st().Attach(uc) }

// detach ends attach; it reports whether a reset poisoned the
// connection meanwhile (its deadline is in the past: not reusable).
func (x *h2Up) detach() bool { return x.st().Detach() }

// forward proxies the stream's request to an upstream of rs and relays
// the answer (exchangeUp, upstream_exchange.go: the exchange HTTP/3 requests
// share); an error means nothing (or not all) was answered yet: the
// caller answers it (failNative).
func (c *h2Conn) forward(st *h2server.Stream, rs *routeState, in h2server.Request) (*upstream, error) {
	fp := upFields.Get().(*[]h1wire.Field)
	req := upHeadH2(&in, *fp)
	defer func() {
		clear(req.Fields) // they view the request's strings
		*fp = req.Fields[:0]
		upFields.Put(fp)
	}()
	fwd := c.fwdFor(in.Authority)
	bodyLen, stream := int64(0), false
	if !in.EndStream && in.ContentLength != 0 {
		bodyLen, stream = in.ContentLength, true
	}
	bp := h1wire.GetBuf(&smallBufs)
	defer h1wire.PutBuf(&smallBufs, bp)
	ob := appendUpstreamHead((*bp)[:0], &req, fwd, bodyLen)
	if stream && bodyLen > 0 && bodyLen <= smallBuf {
		// the whole body is here already (a small form, an API call): one write
		var whole bool
		if ob, whole = st.TakeBody(ob, bodyLen); whole {
			stream = false
		}
	}
	*bp = ob[:0]
	return exchangeUp(rs, (*h2Up)(st), &upRequest{rc: c.rc, out: ob, stream: stream, bodyLen: bodyLen,
		method: req.Method, respHeader: c.tm.respHeader})
}

// interim relays an upstream's 1xx head (upClient).
func (x *h2Up) interim(r *h1wire.ResponseHead) {
	_ = x.st().SendInterim(r.Status, func(e h2server.Encoder) {
		for _, f := range r.Fields {
			if !isRespHop(f.Name, r.Conn, false) {
				e.Field(e.LowerName(f.Name), e.Intern(f.Value))
			}
		}
	})
}

// sendBody streams the request body to the upstream as the head
// declared it (upClient).
func (x *h2Up) sendBody(uc *upConn, bodyLen int64) error {
	bp := h2Buffers.Get().(*[]byte)
	defer h2Buffers.Put(bp)
	body := x.st().Body()
	defer body.Close()
	return copyBodyUp(uc, nil, body, bodyLen, *bp)
}

// relay sends the upstream's response to the client and ends the
// exchange's use of uc.
func (x *h2Up) relay(rs *routeState, up *upstream, uc *upConn, resp *h1wire.ResponseHead, head bool) {
	st, c := x.st(), x.conn()
	up.succeeded()
	up.reqs[classOf(resp.Status)].Inc()
	kind, n := resp.BodyKind(head)
	uc.body.Init(kind, n)
	// A connection pinned to this client goes back to the client's pool
	// before the stream's last frame is queued: the client's next
	// request, sent as soon as it has the answer, finds it there (as the
	// Transport's pool did). It costs an empty END_STREAM frame.
	pinned := uc.pin != nil
	released := false
	release := func(reusable bool) {
		if !released {
			released = true
			broken := st.Detach()
			uc.done(reusable && !broken)
			up.active.Add(-1)
		}
	}
	defer release(false)
	// resp is uc's: once a pinned uc is released, another stream of the
	// client may be parsing its next response into it
	if err := c.sendRespHead(st, rs, resp, kind, uc.body.Done && !pinned); err != nil || uc.body.Done {
		keep := err == nil && !resp.Close
		if err == nil && pinned {
			release(keep)
			_ = st.SendData(nil, true)
		}
		release(keep)
		return
	}
	for {
		data, err := uc.body.Next(&uc.br)
		if err != nil {
			rs.log.Warn("upstream sent a malformed body; response truncated", "upstream", up.Raw, "error", err)
			return // streamDone resets the stream
		}
		if len(data) > 0 {
			last := uc.body.Done && len(uc.body.Trailers) == 0 && !pinned
			if err := st.SendData(data, last); err != nil {
				return
			}
			continue
		}
		if uc.body.Done {
			break
		}
		uc.noDeadline()
		if err := uc.br.Fill(); err != nil {
			if kind == h1wire.BodyClose && err == io.EOF {
				uc.body.Done = true
				resp.Close = true
				continue
			}
			if !st.Canceled() {
				rs.log.Warn("upstream read error during body copy; response truncated", "upstream", up.Raw, "error", err)
			}
			return
		}
	}
	t := uc.body.Trailers
	keep := !resp.Close && kind != h1wire.BodyClose
	if pinned {
		t = append([]byte(nil), t...) // they alias the connection's buffer
		release(keep)
	}
	if len(t) > 0 {
		_ = st.SendTrailers(func(e h2server.Encoder) {
			forEachTrailer(t, func(name, value []byte) { e.Field(e.LowerName(name), string(value)) })
		})
	} else {
		st.End()
	}
	release(keep)
}

// sendRespHead queues the response HEADERS for an upstream head:
// hop-by-hop and framing fields dropped, Content-Length as the body
// will have it, HSTS (the route's replaces the upstream's), a Date.
func (c *h2Conn) sendRespHead(st *h2server.Stream, rs *routeState, resp *h1wire.ResponseHead, kind int, end bool) error {
	return st.SendHeaders(resp.Status, end, func(e h2server.Encoder) bool {
		hsts := rs.hsts
		date := false
		for _, f := range resp.Fields {
			if isRespHop(f.Name, resp.Conn, false) || hsts != "" && h1wire.EqFold(f.Name, "strict-transport-security") {
				continue
			}
			name := e.LowerName(f.Name)
			if name == "date" {
				date = true
			}
			e.Field(name, e.Intern(f.Value))
		}
		if kind == h1wire.BodyLength || kind == h1wire.BodyNone && resp.ContentLength >= 0 && resp.Status != 204 && resp.Status != 304 {
			var num [20]byte
			e.Field("content-length", e.Intern(strconv.AppendInt(num[:0], resp.ContentLength, 10)))
		}
		if hsts != "" {
			e.Field("strict-transport-security", hsts)
		}
		if v := c.s.altSvc(rs); v != "" {
			e.Field("alt-svc", v)
		}
		return date
	})
}

// failNative answers a failed exchange (answerFailure).
func (c *h2Conn) failNative(st *h2server.Stream, rs *routeState, in h2server.Request, up *upstream, err error) {
	_ = rs.answerFailure(st, errors.Is(err, context.Canceled) || st.Canceled(), up, err, in.Method, in.Path, c.addr)
}

// logNative writes the access-log line of a stream served by forward,
// with the fields logAccess writes for net/http's requests.
func (c *h2Conn) logNative(st *h2server.Stream, rs *routeState, in h2server.Request, up *upstream, began time.Time) {
	e := accessEntry{route: rs.name, sni: c.rc.hello.ServerName, client: c.addr, method: in.Method,
		host: in.Authority, path: logPath(in.Path), proto: "HTTP/2.0", tls: tls.VersionName(c.tls.Version),
		status: st.Status(), bytes: st.Written(), began: began}
	if up != nil {
		e.upstream = up.Raw
	}
	c.s.writeAccess(&e)
}

// logOwn writes the access-log line of a request gatehouse answered
// itself (400, 405, 421, 431), once the answer is queued: HTTP/1.1 and
// HTTP/3 log those too. What the log names is what passed
// the checks: a malformed :path or :authority is not written as is.
func (c *h2Conn) logOwn(st *h2server.Stream, rs *routeState, in h2server.Request, began time.Time) {
	if !c.s.accessOn() {
		return
	}
	st.End()
	if !isToken(in.Method) {
		in.Method = ""
	}
	if !h1wire.ValidTarget(bstr(in.Path)) {
		in.Path = ""
	}
	if !validHost(bstr(in.Authority)) {
		in.Authority = ""
	}
	c.logNative(st, rs, in, nil, began)
}
