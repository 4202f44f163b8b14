package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"strconv"
	"time"
	"unsafe"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
	"golang.org/x/net/http2/hpack"
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

// fwdFor returns the connection's forwarding fields for host.
func (c *h2Conn) fwdFor(host string) *fwdInfo { return fwdCached(&c.fwdUp, c.addr, host) }

// upHead is the request as appendUpstreamHead writes it (upHeadBuilder).
func (st *h2Stream) upHead(in h2Request) h1wire.RequestHead {
	var b upHeadBuilder
	b.start(in.method, in.path, in.authority, len(in.fields))
	for _, f := range in.fields {
		if !f.IsPseudo() {
			b.add(f.Name, f.Value)
		}
	}
	return b.finish(in.endStream || in.declared == 0)
}

// attach makes uc the stream's upstream connection: a reset of the
// stream then breaks off its reads and writes at once. false: the
// stream has ended already.
func (st *h2Stream) attach(uc *upConn) bool {
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	if st.err != nil {
		return false
	}
	st.uc = uc
	return true
}

// detach ends attach; it reports whether a reset poisoned the
// connection meanwhile (its deadline is in the past: not reusable).
func (st *h2Stream) detach() bool {
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	st.uc = nil
	return st.ucBroken
}

// breakUpLocked interrupts the stream's upstream exchange (in endLocked).
func (st *h2Stream) breakUpLocked() {
	if st.uc != nil && !st.ucBroken {
		st.ucBroken = true
		_ = st.uc.nc.SetDeadline(time.Unix(1, 0))
	}
}

// forward proxies the stream's request to an upstream of rs and relays
// the answer (exchangeUp, upstream_exchange.go: the exchange HTTP/3 requests
// share); an error means nothing (or not all) was answered yet: the
// caller answers it (failNative).
func (st *h2Stream) forward(rs *routeState, in h2Request) (*upstream, error) {
	c := st.c
	req := st.upHead(in)
	fwd := c.fwdFor(in.authority)
	bodyLen, stream := int64(0), false
	if !in.endStream && in.declared != 0 {
		bodyLen, stream = in.declared, true
	}
	bp := h1wire.GetBuf(&smallBufs)
	defer h1wire.PutBuf(&smallBufs, bp)
	ob := appendUpstreamHead((*bp)[:0], &req, fwd, bodyLen)
	if stream && bodyLen > 0 && bodyLen <= smallBuf {
		// the whole body is here already (a small form, an API call): one write
		c.mu.Lock()
		if st.remoteDone && int64(len(st.body)-st.bodyOff) == bodyLen {
			ob = append(ob, st.body[st.bodyOff:]...)
			c.creditLocked(nil, bodyLen)
			st.body, st.bodyOff, st.bodyClosed = st.body[:0], 0, true
			stream = false
		}
		c.mu.Unlock()
	}
	*bp = ob[:0]
	return exchangeUp(rs, st, &upRequest{rc: c.rc, out: ob, stream: stream, bodyLen: bodyLen,
		method: req.Method, respHeader: c.tm.respHeader})
}

// interim relays an upstream's 1xx head (upClient).
func (st *h2Stream) interim(r *h1wire.ResponseHead) {
	_ = st.sendInterim(r.Status, func(c *h2Conn) {
		for _, f := range r.Fields {
			if !isRespHop(f.Name, r.Conn, false) {
				c.enc.WriteField(hpack.HeaderField{Name: c.lowerName(f.Name), Value: c.intern(f.Value)})
			}
		}
	})
}

// sendBody streams the request body to the upstream as the head
// declared it (upClient).
func (st *h2Stream) sendBody(uc *upConn, bodyLen int64) error {
	bp := h2Buffers.Get().(*[]byte)
	defer h2Buffers.Put(bp)
	body := h2Body{st}
	defer body.Close()
	return copyBodyUp(uc, nil, body, bodyLen, *bp)
}

// relay sends the upstream's response to the client and ends the
// exchange's use of uc.
func (st *h2Stream) relay(rs *routeState, up *upstream, uc *upConn, resp *h1wire.ResponseHead, head bool) {
	up.succeeded()
	up.reqs[classOf(resp.Status)].Inc()
	kind, n := resp.BodyKind(head)
	uc.body.Init(kind, n)
	st.wroteHeader, st.status = true, resp.Status
	// A connection pinned to this client goes back to the client's pool
	// before the stream's last frame is queued: the client's next
	// request, sent as soon as it has the answer, finds it there (as the
	// Transport's pool did). It costs an empty END_STREAM frame.
	pinned := uc.pin != nil
	released := false
	release := func(reusable bool) {
		if !released {
			released = true
			broken := st.detach()
			uc.done(reusable && !broken)
			up.active.Add(-1)
		}
	}
	defer release(false)
	// resp is uc's: once a pinned uc is released, another stream of the
	// client may be parsing its next response into it
	if err := st.sendRespHead(rs, resp, kind, uc.body.Done && !pinned); err != nil || uc.body.Done {
		keep := err == nil && !resp.Close
		if err == nil && pinned {
			release(keep)
			_ = st.sendData(nil, true)
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
			if err := st.sendData(data, last); err != nil {
				return
			}
			st.bytes += int64(len(data))
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
			if !st.canceled() {
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
		_ = st.sendRawTrailers(t)
	} else if !st.ended {
		_ = st.sendData(nil, true)
	}
	release(keep)
}

// canceled reports whether the stream has ended (a client reset).
func (st *h2Stream) canceled() bool {
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	return st.err != nil
}

// sendRespHead queues the response HEADERS for an upstream head:
// hop-by-hop and framing fields dropped, Content-Length as the body
// will have it, HSTS (the route's replaces the upstream's), a Date.
func (st *h2Stream) sendRespHead(rs *routeState, resp *h1wire.ResponseHead, kind int, end bool) error {
	return st.queueBlock(end, func(c *h2Conn) {
		enc := c.enc
		enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusString(resp.Status)})
		hsts := rs.hsts
		date := false
		for _, f := range resp.Fields {
			if isRespHop(f.Name, resp.Conn, false) || hsts != "" && h1wire.EqFold(f.Name, "strict-transport-security") {
				continue
			}
			name := c.lowerName(f.Name)
			if name == "date" {
				date = true
			}
			enc.WriteField(hpack.HeaderField{Name: name, Value: c.intern(f.Value)})
		}
		if kind == h1wire.BodyLength || kind == h1wire.BodyNone && resp.ContentLength >= 0 && resp.Status != 204 && resp.Status != 304 {
			var num [20]byte
			enc.WriteField(hpack.HeaderField{Name: "content-length", Value: c.intern(strconv.AppendInt(num[:0], resp.ContentLength, 10))})
		}
		if hsts != "" {
			enc.WriteField(hpack.HeaderField{Name: "strict-transport-security", Value: hsts})
		}
		if v := c.s.altSvc(rs); v != "" {
			enc.WriteField(hpack.HeaderField{Name: "alt-svc", Value: v})
		}
		if !date {
			enc.WriteField(hpack.HeaderField{Name: "date", Value: httpDate()})
		}
	})
}

// sendRawTrailers ends the stream with a chunked body's trailer section
// (field lines as received).
func (st *h2Stream) sendRawTrailers(t []byte) error {
	return st.queueBlock(true, func(c *h2Conn) {
		forEachTrailer(t, func(name, value []byte) {
			c.enc.WriteField(hpack.HeaderField{Name: c.lowerName(name), Value: string(value)})
		})
	})
}

// lowerName is a response field name in lower case, as a string shared
// across responses; mu is held.
func (c *h2Conn) lowerName(b []byte) string {
	if k, ok := h2LowerBytes[string(b)]; ok {
		return k
	}
	var tmp [64]byte
	l := tmp[:0]
	if len(b) > len(tmp) {
		l = make([]byte, 0, len(b))
	}
	for _, ch := range b {
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		l = append(l, ch)
	}
	return c.intern(l)
}

// intern returns b as a string, the same one for the same bytes while
// the connection's table has room: response fields repeat (a server
// name, a content type, a length), and HPACK keeps the strings it
// indexes, so each must be a string of its own. mu is held.
func (c *h2Conn) intern(b []byte) string {
	if s, ok := c.strs[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(b) <= 128 {
		if c.strs == nil || len(c.strs) >= 256 {
			c.strs = make(map[string]string, 64)
		}
		c.strs[s] = s
	}
	return s
}

// h2LowerBytes maps field names in their usual spellings (canonical,
// and already lower case) to lower case.
var h2LowerBytes = map[string]string{}

func init() {
	for k, l := range h2Lower {
		h2LowerBytes[k] = l
		h2LowerBytes[l] = l
	}
}

// failNative answers a failed exchange (answerFailure).
func (st *h2Stream) failNative(rs *routeState, in h2Request, up *upstream, err error) {
	_ = rs.answerFailure(st, errors.Is(err, context.Canceled) || st.canceled(), up, err, in.method, in.path, st.c.addr)
}

// logNative writes the access-log line of a stream served by forward,
// with the fields logAccess writes for net/http's requests.
func (st *h2Stream) logNative(rs *routeState, in h2Request, up *upstream, began time.Time) {
	c := st.c
	e := accessEntry{route: rs.name, sni: c.rc.hello.ServerName, client: c.addr, method: in.method,
		host: in.authority, path: logPath(in.path), proto: "HTTP/2.0", tls: tls.VersionName(c.tls.Version),
		status: st.status, bytes: st.bytes, began: began}
	if up != nil {
		e.upstream = up.Raw
	}
	c.s.writeAccess(&e)
}

// logOwn writes the access-log line of a request gatehouse answered
// itself (400, 405, 421, 431), once the answer is queued: HTTP/1.1 and
// HTTP/3 log those too. What the log names is what passed
// the checks: a malformed :path or :authority is not written as is.
func (st *h2Stream) logOwn(rs *routeState, in h2Request, began time.Time) {
	if st.c.s.access == nil {
		return
	}
	st.end()
	if !isToken(in.method) {
		in.method = ""
	}
	if !h1wire.ValidTarget(bstr(in.path)) {
		in.path = ""
	}
	if !validHost(bstr(in.authority)) {
		in.authority = ""
	}
	st.logNative(rs, in, nil, began)
}
