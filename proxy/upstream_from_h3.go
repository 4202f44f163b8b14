package proxy

import (
	"context"
	"errors"
	"io"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"unsafe"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h2server"
)

// An HTTP/3 request's exchange with an http:// or https:// upstream
// through the own HTTP/1.1 client, as an HTTP/2 stream's (upstream_from_h2.go):
// the same head (upHeadBuilder, appendUpstreamHead), the same exchange
// (exchangeUp: pick / skip / retry, passive health, PROXY-protocol
// pinning to the QUIC connection, early responses, 1xx), the same
// failure answers (answerFailure). What differs is only how bytes meet
// the client: quic-go's http.ResponseWriter and request body, wrapped
// by bounded (policy_limits.go) for the no-progress bounds.

// h3Up is one HTTP/3 request's side of the exchange (upClient).
type h3Up struct {
	w    http.ResponseWriter // bounded: writes within [timeouts] send
	r    *http.Request       // its Body bounded: reads within client_body
	hsts string              // the route's, set on w already: it replaces the upstream's
	pre  []byte              // request body bytes read ahead (forwardH3)
	buf  *[]byte             // pre's buffer, and the body copy buffer

	mu     sync.Mutex
	uc     *upConn
	gone   bool // the client went away: no further exchange
	broken bool // … while uc was attached: uc's deadline is in the past
}

// forwardH3 proxies an HTTP/3 request to an upstream of rs and relays
// the answer. w and r come from bounded; a is the access record, if
// the request is logged.
func (s *Server) forwardH3(rs *routeState, rc *replayConn, w http.ResponseWriter, r *http.Request, a *accessRecord) {
	tm := s.state.Load().tm
	x := &h3Up{w: w, r: r, hsts: rs.hsts}
	// a client that resets its stream breaks off the exchange at once
	// (as an HTTP/2 stream's reset does: breakUpLocked), also while the
	// upstream is silent
	stop := context.AfterFunc(r.Context(), x.cancel)
	defer stop()

	// The head declares the body's framing, and a body that is all here
	// goes in the head's write: a declared small body is read first. A
	// body of unknown length (no content-length: HTTP/3 ends a body with
	// the stream, RFC 9114 §4.1, and quic-go does not tell whether that
	// end has come) is chunked at once, as an HTTP/2 stream's, except
	// for methods that usually have none (a GET): there one read tells
	// none from some, as net/http's transport probes them (the client
	// ends the stream with its HEADERS).
	bodyLen, stream := r.ContentLength, false
	noBody := bodyLen == 0
	if !h1wire.ValidTarget(bstr(r.RequestURI)) {
		// what reaches an HTTP/1.1 upstream must parse there as it did
		// here (as for HTTP/2: engine_h2.go's ServeStream)
		badRequest(w, r, "malformed :path")
		return
	}
	if bodyLen != 0 {
		if h1wire.EqFold(bstr(r.Header.Get("Expect")), "100-continue") {
			w.WriteHeader(http.StatusContinue) // the client may wait for it (RFC 9110 §10.1.1)
		}
		x.buf = h1wire.GetBuf(&upBufs)
		defer h1wire.PutBuf(&upBufs, x.buf)
		var err error
		switch {
		case bodyLen > 0 && bodyLen <= smallBuf:
			var n int
			n, err = io.ReadFull(r.Body, (*x.buf)[:bodyLen])
			x.pre = (*x.buf)[:n]
		case bodyLen > 0:
			stream = true
		case !usuallyNoBody(r.Method):
			stream = true // chunked
		default:
			var n int
			n, err = r.Body.Read((*x.buf)[:smallBuf])
			x.pre = (*x.buf)[:n]
			switch {
			case err == io.EOF:
				err, bodyLen = nil, int64(n)
				noBody = n == 0
			case err == nil:
				stream = true // chunked, from pre on
			}
		}
		if err != nil {
			if !rs.answerFailure(w, false, nil, &clientBodyError{err}, r.Method, r.URL.Path, r.RemoteAddr) {
				panic(http.ErrAbortHandler) // reset the stream: no 200 made up by quic-go
			}
			return
		}
	}
	var b upHeadBuilder
	b.start(r.Method, r.RequestURI, r.Host, len(r.Header))
	for k, vs := range r.Header {
		for _, v := range vs {
			b.add(k, v)
		}
	}
	req := b.finish(noBody)
	fwd := fwdCached(&rc.fwdUp, r.RemoteAddr, r.Host)
	bp := h1wire.GetBuf(&smallBufs)
	defer h1wire.PutBuf(&smallBufs, bp)
	ob := appendUpstreamHead((*bp)[:0], &req, fwd, bodyLen)
	if !stream {
		ob = append(ob, x.pre...)
		x.pre = nil
	}
	*bp = ob[:0]
	up, err := exchangeUp(rs, x, &upRequest{rc: rc, out: ob, stream: stream, bodyLen: bodyLen,
		method: req.Method, respHeader: tm.respHeader})
	if up == nil {
		up = failedUpstream(err) // every upstream failed: name the last one tried
	}
	if a != nil {
		a.upstream = up
	}
	if err != nil && !rs.answerFailure(w, errors.Is(err, context.Canceled) || r.Context().Err() != nil, up, err, r.Method, r.URL.Path, r.RemoteAddr) {
		panic(http.ErrAbortHandler) // the client went away: reset the stream, no 200 made up by quic-go
	}
}

// usuallyNoBody: methods whose requests rarely have a body (as
// net/http's transport lists them for its probe).
func usuallyNoBody(method string) bool {
	switch method {
	case "GET", "HEAD", "DELETE", "OPTIONS", "PROPFIND", "SEARCH":
		return true
	}
	return false
}

// upBufs lend the request body copy buffers (as h2Buffers do).
var upBufs = sync.Pool{New: func() any { b := make([]byte, upBuf); return &b }}

func (x *h3Up) cancel() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gone = true
	if x.uc != nil && !x.broken {
		x.broken = true
		x.uc.Interrupt()
	}
}

func (x *h3Up) attach(uc *upConn) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.gone {
		return false
	}
	x.uc = uc
	return true
}

func (x *h3Up) detach() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.uc = nil
	return x.broken
}

func (x *h3Up) sendBody(uc *upConn, bodyLen int64) error {
	return copyBodyUp(uc, x.pre, x.r.Body, bodyLen, *x.buf)
}

// interim relays a 1xx head with its own fields only: the final
// response's (HSTS, set before) are kept aside meanwhile.
func (x *h3Up) interim(resp *h1wire.ResponseHead) {
	h := x.w.Header()
	saved := maps.Clone(h)
	clear(h)
	for _, f := range resp.Fields {
		if !isRespHop(f.Name, resp.Conn, false) {
			k := canonicalBytes(f.Name)
			h[k] = append(h[k], string(f.Value))
		}
	}
	x.w.WriteHeader(resp.Status)
	clear(h)
	maps.Copy(h, saved)
}

// relay sends the upstream's response to the client and ends the
// exchange's use of uc: the head's fields less hop-by-hop ones (the
// route's HSTS replaces the upstream's; quic-go adds a Date when the
// upstream sent none, as the other engines do), the body as it comes,
// flushed whenever the upstream pauses, then its trailers. A body that
// breaks off resets the stream (http.ErrAbortHandler), so the client
// never takes a truncated body for a whole one.
func (x *h3Up) relay(rs *routeState, up *upstream, uc *upConn, resp *h1wire.ResponseHead, head bool) {
	up.succeeded()
	up.reqs[classOf(resp.Status)].Inc()
	kind, n := resp.BodyKind(head)
	uc.body.Init(kind, n)
	released := false
	release := func(reusable bool) {
		if !released {
			released = true
			broken := x.detach()
			uc.done(reusable && !broken)
			up.active.Add(-1)
		}
	}
	defer release(false)
	// the values as one string and their slices in one array (two
	// allocations, not two per field): relayed fields are read only
	relayed := func(f h1wire.Field) bool {
		return !isRespHop(f.Name, resp.Conn, false) && (x.hsts == "" || !h1wire.EqFold(f.Name, "strict-transport-security"))
	}
	size, count := 0, 1
	for _, f := range resp.Fields {
		if relayed(f) {
			size, count = size+len(f.Value), count+1
		}
	}
	var vb []byte
	if kind == h1wire.BodyLength || kind == h1wire.BodyNone && resp.ContentLength >= 0 && resp.Status != 204 && resp.Status != 304 {
		vb = make([]byte, 0, size+20)
		vb = strconv.AppendInt(vb, resp.ContentLength, 10)
	} else if size > 0 {
		vb = make([]byte, 0, size)
	}
	all := unsafe.String(unsafe.SliceData(vb), cap(vb))
	vals := make([]string, count)
	h := x.w.Header()
	if n := len(vb); n > 0 {
		vals[0] = all[:n]
		h["Content-Length"] = vals[0:1:1]
	} else if head {
		h["Content-Length"] = nil // quic-go would count the (no) bytes written
	}
	i := 1
	for _, f := range resp.Fields {
		if !relayed(f) {
			continue
		}
		start := len(vb)
		vb = append(vb, f.Value...)
		vals[i] = all[start:len(vb)]
		k := canonicalBytes(f.Name)
		if h[k] == nil {
			h[k] = vals[i : i+1 : i+1]
		} else {
			h[k] = append(h[k], vals[i])
		}
		i++
	}
	if _, ok := h["Content-Type"]; !ok {
		h["Content-Type"] = nil // relayed as sent: quic-go would sniff one
	}
	x.w.WriteHeader(resp.Status)
	if uc.body.Done {
		release(!resp.Close)
		return
	}
	flusher, _ := x.w.(interface{ FlushError() error })
	unflushed := true // the head: sent at once when the body does not follow it
	for {
		data, err := uc.body.Next(&uc.br)
		if err != nil {
			rs.log.Warn("upstream sent a malformed body; response truncated", "upstream", up.Raw, "error", err)
			panic(http.ErrAbortHandler)
		}
		if len(data) > 0 {
			if _, err := x.w.Write(data); err != nil {
				panic(http.ErrAbortHandler) // the client went away, or stopped reading ([timeouts] send)
			}
			unflushed = true
			continue
		}
		if uc.body.Done {
			break
		}
		if unflushed && flusher != nil {
			// the upstream pauses (an event stream, a slow producer):
			// what came so far goes to the client now
			if err := flusher.FlushError(); err != nil {
				panic(http.ErrAbortHandler)
			}
			unflushed = false
		}
		uc.noDeadline()
		if err := uc.br.Fill(); err != nil {
			if kind == h1wire.BodyClose && err == io.EOF {
				uc.body.Done = true
				resp.Close = true
				continue
			}
			if x.r.Context().Err() == nil {
				rs.log.Warn("upstream read error during body copy; response truncated", "upstream", up.Raw, "error", err)
			}
			panic(http.ErrAbortHandler)
		}
	}
	forEachTrailer(uc.body.Trailers, func(name, value []byte) {
		k := http.TrailerPrefix + canonicalBytes(name)
		h[k] = append(h[k], string(value))
	})
	release(!resp.Close && kind != h1wire.BodyClose)
}

// canonicalBytes is a field name as an http.Header key: quic-go looks
// fields up by their canonical names (Date, Content-Length, Trailer),
// and writes every name in lower case. Common names cost no allocation.
func canonicalBytes(b []byte) string { return h2server.CanonicalBytes(b) }
