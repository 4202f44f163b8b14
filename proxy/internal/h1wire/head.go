package h1wire

import (
	"bytes"
	"errors"
)

// Field is one field line of a head (RFC 9112 §5); Name and Value alias
// the read buffer the head was parsed from, Value without its OWS.
type Field struct {
	Name, Value []byte
}

// ParseError is a request head refused before any upstream sees it:
// the status to answer with and the reason, for the log.
type ParseError struct {
	Status int
	Msg    string
}

func (e *ParseError) Error() string { return e.Msg }

func bad(msg string) *ParseError { return &ParseError{Status: 400, Msg: msg} }

var errLineEnding = bad("bare LF or CR in the request head")

// ErrBadResponse is a response head (or its framing) refused: the
// upstream's answer is not passed on.
var ErrBadResponse = errors.New("malformed response from upstream")

// HeadEnd scans b from off for the end of a message head: the empty
// line after the start line and the field lines (RFC 9112 §2.1). It
// returns the length of the head including the final CRLF, or 0 when
// more bytes are needed, with next the offset to resume the scan from
// (the start of the current incomplete line). Every line ends in CRLF:
// a bare LF, or a CR not followed by LF, is an error at once (RFC 9112
// §2.2 lets a recipient accept a bare LF; gatehouse does not, so it
// never reads lines where an upstream would not).
func HeadEnd(b []byte, off int) (end, next int, err error) {
	for {
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			if j := bytes.IndexByte(b[off:], '\r'); j >= 0 && j < len(b[off:])-1 {
				return 0, off, errLineEnding // CR followed by something other than LF
			}
			return 0, off, nil
		}
		nl := off + i
		if nl == 0 || b[nl-1] != '\r' {
			return 0, off, errLineEnding
		}
		if cr := bytes.IndexByte(b[off:nl-1], '\r'); cr >= 0 {
			return 0, off, errLineEnding
		}
		if nl-1 == off && off > 0 { // an empty line after the request line and fields
			return nl + 1, nl + 1, nil
		}
		if nl-1 == off && off == 0 {
			// an empty line before the request line: RFC 9112 2.2 lets a
			// server ignore one; gatehouse refuses, like a garbled request
			return 0, 0, bad("empty line before the request line")
		}
		off = nl + 1
	}
}

// RequestHead is a parsed request head. One per client connection,
// reset for each request, so the field slice's backing array is reused.
type RequestHead struct {
	Method, Target []byte
	Minor          int // HTTP/1.minor
	Host           []byte
	Fields         []Field // every field as received (hop-by-hop ones included)

	ContentLength int64 // -1: none
	Chunked       bool
	Close         bool // the client asked for the connection to close (or HTTP/1.0 without keep-alive)
	KeepAlive     bool // HTTP/1.0 with Connection: keep-alive
	Upgrade       bool // Connection: upgrade with an Upgrade field
	Expect100     bool
	Conn          [][]byte // tokens of Connection (and Proxy-Connection): fields named there are hop-by-hop
	HeadLen       int      // bytes of the head, final CRLF included
}

// Reset empties h (keeping the backing arrays of its slices): nothing
// of the last request remains to be logged.
func (h *RequestHead) Reset() {
	fields, conn := h.Fields[:0], h.Conn[:0]
	*h = RequestHead{Fields: fields, Conn: conn, ContentLength: -1}
}

// Parse parses the request head b, as found by HeadEnd (lines end in
// CRLF, no bare CR or LF), into h: the request-line (RFC 9112 §3), the
// field lines (§5: no obs-fold, no whitespace before the colon, token
// names, valid values), Host (§3.2: exactly one in HTTP/1.1, a valid
// uri-host [":" port]), the framing (§6: Transfer-Encoding only as a
// single "chunked" and never with Content-Length, one Content-Length
// value), persistence (§9.3), Expect (RFC 9110 §10.1.1: 100-continue
// only), and the target's form (§3.2). A refusal is a *ParseError with
// the status to answer.
func (h *RequestHead) Parse(b []byte) error {
	h.Reset()
	h.HeadLen = len(b)
	nl := bytes.IndexByte(b, '\n')
	line := b[:nl-1]
	rest := b[nl+1:]

	// request-line = method SP request-target SP HTTP-version
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return bad("malformed request line")
	}
	h.Method = line[:sp1]
	line = line[sp1+1:]
	sp2 := bytes.IndexByte(line, ' ')
	if sp2 <= 0 {
		return bad("malformed request line")
	}
	h.Target, line = line[:sp2], line[sp2+1:]
	if !IsToken(h.Method) || !ValidTarget(h.Target) {
		return bad("malformed request line")
	}
	switch string(line) {
	case "HTTP/1.1":
		h.Minor = 1
	case "HTTP/1.0":
		h.Minor = 0
		h.Close = true
	default:
		if len(line) == 8 && string(line[:5]) == "HTTP/" {
			return &ParseError{Status: 505, Msg: "HTTP version not supported"}
		}
		return bad("malformed request line")
	}

	var hosts, tes int
	var clRaw []byte    // the first Content-Length value
	closeTok := false   // Connection: close
	for len(rest) > 2 { // the final CRLF is left
		name, value, n, fe := scanField(rest)
		if fe != fieldOK {
			return fieldErrs[fe]
		}
		rest = rest[n:]
		h.Fields = append(h.Fields, Field{name, value})
		switch len(name) {
		case 4:
			if EqFold(name, "host") {
				hosts++
				h.Host = value
			}
		case 6:
			if EqFold(name, "expect") {
				if !EqFold(value, "100-continue") {
					return &ParseError{Status: 417, Msg: "unsupported expectation"}
				}
				h.Expect100 = true
			}
		case 10, 16:
			if EqFold(name, "connection") || EqFold(name, "proxy-connection") {
				ForEachToken(value, func(tok []byte) {
					switch {
					case EqFold(tok, "close"):
						h.Close, closeTok = true, true
					case EqFold(tok, "keep-alive"):
						h.KeepAlive = true
					case EqFold(tok, "upgrade"):
						h.Upgrade = true
					}
					h.Conn = append(h.Conn, tok)
				})
			}
		case 14:
			if EqFold(name, "content-length") {
				var err error
				ForEachToken(value, func(tok []byte) {
					n, ok := ParseUint(tok)
					switch {
					case !ok:
						err = bad("invalid Content-Length")
					case h.ContentLength >= 0 && h.ContentLength != n:
						err = bad("conflicting Content-Length values")
					default:
						h.ContentLength = n
					}
				})
				if err != nil {
					return err
				}
				// one value per field: a list ("1, 1", which RFC 9110
				// 8.6 lets a recipient accept) is refused, as net/http
				// and nginx refuse it (found by FuzzReqHead); a
				// repeated field must be spelled the same: "03" then
				// "3" is refused, as net/http does (found by FuzzRespHead)
				if len(value) == 0 || bytes.IndexByte(value, ',') >= 0 {
					return bad("invalid Content-Length")
				}
				if clRaw != nil && !bytes.Equal(clRaw, value) {
					return bad("conflicting Content-Length values")
				}
				clRaw = value
			}
		case 17:
			if EqFold(name, "transfer-encoding") {
				tes++
				if !EqFold(value, "chunked") {
					return &ParseError{Status: 501, Msg: "unsupported Transfer-Encoding"}
				}
				h.Chunked = true
			}
		}
	}
	// close wins over keep-alive, as in net/http (found by FuzzReqHead)
	if h.Minor == 0 && h.KeepAlive && !h.Upgrade && !closeTok {
		h.Close = false
	}
	if h.Minor == 1 && !h.Close {
		h.KeepAlive = true
	}
	switch {
	case tes > 1:
		return bad("Transfer-Encoding sent more than once")
	case h.Chunked && h.ContentLength >= 0:
		return bad("both Content-Length and Transfer-Encoding")
	case h.Chunked && h.Minor == 0:
		return bad("Transfer-Encoding in an HTTP/1.0 request")
	case hosts > 1:
		return bad("more than one Host field")
	case hosts == 0 && h.Minor == 1:
		return bad("HTTP/1.1 request without Host")
	case hosts == 1 && !ValidHost(h.Host):
		return bad("invalid Host")
	}
	if h.Upgrade {
		h.Upgrade = false
		for _, f := range h.Fields {
			if EqFold(f.Name, "upgrade") && len(f.Value) > 0 {
				h.Upgrade = true
			}
		}
	}
	return h.normalizeTarget()
}

// normalizeTarget turns an absolute-form target into origin-form with
// its authority as the Host (RFC 9112 3.2.2), and checks the forms.
func (h *RequestHead) normalizeTarget() error {
	t := h.Target
	switch {
	case string(h.Method) == "CONNECT": // any target form (origin-form too)
		return &ParseError{Status: 405, Msg: "CONNECT is not supported"}
	case t[0] == '/':
		return nil
	case len(t) == 1 && t[0] == '*':
		if string(h.Method) != "OPTIONS" {
			return bad("asterisk-form target for a method other than OPTIONS")
		}
		return nil
	}
	var rest []byte
	switch {
	case len(t) > 7 && EqFold(t[:7], "http://"):
		rest = t[7:]
	case len(t) > 8 && EqFold(t[:8], "https://"):
		rest = t[8:]
	default:
		return bad("malformed request target")
	}
	i := bytes.IndexAny(rest, "/?")
	auth := rest
	path := rest[len(rest):]
	if i >= 0 {
		auth, path = rest[:i], rest[i:]
	}
	if len(auth) == 0 || !ValidHost(auth) {
		return bad("malformed request target authority")
	}
	h.Host = auth
	switch {
	case len(path) == 0:
		h.Target = slash
	case path[0] == '?':
		h.Target = append([]byte{'/'}, path...) // "http://h?q" → "/?q" (rare: allocates)
	default:
		h.Target = path
	}
	return nil
}

var slash = []byte{'/'}

// ResponseHead is a parsed response head (an upstream's); its slices
// alias the read buffer it was parsed from.
type ResponseHead struct {
	Status        int
	StatusLine    []byte // "200 OK": the code and reason as the upstream sent them
	Minor         int
	Fields        []Field
	ContentLength int64 // -1: none
	Chunked       bool  // Transfer-Encoding ends in chunked
	TE            bool  // a Transfer-Encoding field was present
	Close         bool  // the upstream will close the connection after this response
	Conn          [][]byte
	HeadLen       int
}

// Parse parses the response head b, as found by HeadEnd, into h
// (keeping the backing arrays of its slices): the status-line (RFC 9112
// §4: HTTP/1.0 or 1.1, a three-digit code, a reason of valid
// characters), the field lines as for a request, one Content-Length
// value, Transfer-Encoding only as a single "chunked" in HTTP/1.1, and
// persistence (§9.3). Anything else is ErrBadResponse.
func (h *ResponseHead) Parse(b []byte) error {
	fields, conn := h.Fields[:0], h.Conn[:0]
	*h = ResponseHead{Fields: fields, Conn: conn, ContentLength: -1, HeadLen: len(b)}
	nl := bytes.IndexByte(b, '\n')
	line := b[:nl-1]
	rest := b[nl+1:]
	// status-line = HTTP-version SP status-code SP [ reason-phrase ]
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return ErrBadResponse
	}
	switch line[7] {
	case '0':
		h.Close = true
	case '1':
		h.Minor = 1
	default:
		return ErrBadResponse
	}
	code, ok := ParseUint(line[9:12])
	if !ok || code < 100 || code > 999 {
		return ErrBadResponse
	}
	h.Status = int(code)
	h.StatusLine = line[9:]
	if !ValidValue(h.StatusLine) {
		return ErrBadResponse
	}
	keepAlive, closeTok := false, false
	var clRaw []byte // the first Content-Length value
	for len(rest) > 2 {
		name, value, n, fe := scanField(rest)
		if fe != fieldOK {
			return ErrBadResponse
		}
		rest = rest[n:]
		h.Fields = append(h.Fields, Field{name, value})
		switch len(name) {
		case 10:
			if EqFold(name, "connection") {
				ForEachToken(value, func(tok []byte) {
					switch {
					case EqFold(tok, "close"):
						h.Close, closeTok = true, true
					case EqFold(tok, "keep-alive"):
						keepAlive = true
					}
					h.Conn = append(h.Conn, tok)
				})
			}
		case 14:
			if EqFold(name, "content-length") {
				var bad bool
				ForEachToken(value, func(tok []byte) {
					n, ok := ParseUint(tok)
					if !ok || h.ContentLength >= 0 && h.ContentLength != n {
						bad = true
					}
					h.ContentLength = n
				})
				// one value per field, as net/http takes it: "," or
				// "1, 1" are refused, and a repeated field must be
				// spelled the same ("03" then "3" is refused)
				// (found by FuzzRespHead)
				if bad || len(value) == 0 || bytes.IndexByte(value, ',') >= 0 ||
					clRaw != nil && !bytes.Equal(clRaw, value) {
					return ErrBadResponse
				}
				clRaw = value
			}
		case 17:
			if EqFold(name, "transfer-encoding") {
				// only a single "chunked" (as net/http and nginx take
				// it): another coding would reach the client without
				// its Transfer-Encoding, undecoded; in HTTP/1.0 the
				// framing is faulty (RFC 9112 6.1: net/http reads to
				// close there, gatehouse decoded chunks) (found by
				// FuzzRespHead)
				if h.TE || !EqFold(value, "chunked") || h.Minor == 0 {
					return ErrBadResponse
				}
				h.TE = true
				// the final coding decides the framing
				last := value
				if i := bytes.LastIndexByte(value, ','); i >= 0 {
					last = TrimOWS(value[i+1:])
				}
				h.Chunked = EqFold(last, "chunked")
			}
		}
	}
	// close wins over keep-alive, as in net/http (found by FuzzRespHead)
	if h.Minor == 0 && keepAlive && !closeTok {
		h.Close = false
	}
	if h.TE {
		// RFC 9112 6.3: Transfer-Encoding overrides Content-Length, and
		// a message with both may be an attempt at smuggling: no reuse
		if !h.Chunked || h.ContentLength >= 0 {
			h.Close = true
		}
		h.ContentLength = -1
	}
	return nil
}

// BodyKind is the framing of the body that follows h, in answer to a
// request with method HEAD when head is set (RFC 9112 §6.3): BodyNone,
// BodyChunked, BodyLength with its length, or BodyClose.
func (h *ResponseHead) BodyKind(head bool) (int, int64) {
	switch {
	case head || h.Status < 200 || h.Status == 204 || h.Status == 304:
		return BodyNone, 0
	case h.Chunked:
		return BodyChunked, 0
	case h.TE:
		return BodyClose, 0
	case h.ContentLength >= 0:
		return BodyLength, h.ContentLength
	}
	return BodyClose, 0
}
