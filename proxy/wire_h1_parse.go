package proxy

import (
	"bytes"
	"errors"
)

// Strict HTTP/1.1 message parsing (RFC 9112) for gatehouse's own
// HTTP/1.1 path. A proxy that parses more leniently than the upstream
// behind it is how request smuggling happens, so anything ambiguous is
// refused: bare CR or LF, obs-fold, whitespace before a colon, invalid
// names and values, Content-Length together with Transfer-Encoding,
// conflicting Content-Lengths. Parsed fields are slices of the caller's
// read buffer: nothing is copied and no map is built per request.

// hfield is one header field; name and value alias the read buffer.
type hfield struct {
	name, value []byte
}

// parseError is a request gatehouse refuses before any upstream sees
// it: the status to answer and the reason, for the log.
type parseError struct {
	status int
	msg    string
}

func (e *parseError) Error() string { return e.msg }

func bad(msg string) *parseError { return &parseError{status: 400, msg: msg} }

var (
	errHeadTooLarge = &parseError{status: 431, msg: "request header block larger than 64 KiB"}
	errLineEnding   = bad("bare LF or CR in the request head")
)

// reqHead is a parsed request head. One per client connection, reset
// for each request, so the header slice's backing array is reused.
type reqHead struct {
	method, target []byte
	minor          int // HTTP/1.minor
	host           []byte
	fields         []hfield // every field as received (hop-by-hop ones included)

	contentLength int64 // -1: none
	chunked       bool
	close         bool // the client asked for the connection to close (or HTTP/1.0 without keep-alive)
	keepAlive     bool // HTTP/1.0 with Connection: keep-alive
	upgrade       bool // Connection: upgrade with an Upgrade field
	expect100     bool
	conn          [][]byte // tokens of Connection (and Proxy-Connection): fields named there are hop-by-hop
	headLen       int      // bytes of the head, final CRLF included
}

func (h *reqHead) reset() {
	fields, conn := h.fields[:0], h.conn[:0]
	*h = reqHead{fields: fields, conn: conn, contentLength: -1}
}

// headEnd scans b from off for the end of a message head (an empty
// line). It returns the length of the head including the final CRLF,
// or 0 when more bytes are needed, with next the offset to resume the
// scan from (the start of the current incomplete line). A bare LF, or
// a CR not followed by LF, is an error at once.
func headEnd(b []byte, off int) (end, next int, err error) {
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

// tchar reports whether c may appear in a token (RFC 9110 5.6.2).
var tchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return
}()

func isTokenBytes(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tchar[c] {
			return false
		}
	}
	return true
}

// validValue: field-value chars (VCHAR, obs-text, SP, HTAB); no other CTL.
func validValue(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// validTarget: a request-target has no CTL, space or non-ASCII byte,
// and every % starts a percent-encoded byte (net/http refused the rest).
func validTarget(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for i, c := range b {
		if c <= 0x20 || c >= 0x7f {
			return false
		}
		if c == '%' && (i+2 >= len(b) || !isHex(b[i+1]) || !isHex(b[i+2])) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// eqFold compares an ASCII header name with a lower-case constant.
func eqFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// parseUint parses a non-empty decimal without sign, within int64.
func parseUint(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// forEachToken calls f for each non-empty comma-separated element of v.
func forEachToken(v []byte, f func(tok []byte)) {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		var tok []byte
		if i < 0 {
			tok, v = v, nil
		} else {
			tok, v = v[:i], v[i+1:]
		}
		if tok = trimOWS(tok); len(tok) > 0 {
			f(tok)
		}
	}
}

// parse parses the request head b (as found by headEnd: lines end in
// CRLF, no bare CR or LF) into h.
func (h *reqHead) parse(b []byte) error {
	h.reset()
	h.headLen = len(b)
	nl := bytes.IndexByte(b, '\n')
	line := b[:nl-1]
	rest := b[nl+1:]

	// request-line = method SP request-target SP HTTP-version
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return bad("malformed request line")
	}
	h.method = line[:sp1]
	line = line[sp1+1:]
	sp2 := bytes.IndexByte(line, ' ')
	if sp2 <= 0 {
		return bad("malformed request line")
	}
	h.target, line = line[:sp2], line[sp2+1:]
	if !isTokenBytes(h.method) || !validTarget(h.target) {
		return bad("malformed request line")
	}
	switch string(line) {
	case "HTTP/1.1":
		h.minor = 1
	case "HTTP/1.0":
		h.minor = 0
		h.close = true
	default:
		if len(line) == 8 && string(line[:5]) == "HTTP/" {
			return &parseError{status: 505, msg: "HTTP version not supported"}
		}
		return bad("malformed request line")
	}

	var hosts, tes int
	var clRaw []byte    // the first Content-Length value
	closeTok := false   // Connection: close
	for len(rest) > 2 { // the final CRLF is left
		nl := bytes.IndexByte(rest, '\n')
		line := rest[:nl-1]
		rest = rest[nl+1:]
		if line[0] == ' ' || line[0] == '\t' {
			return bad("obsolete line folding in a header field")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return bad("header line without a field name")
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		if !isTokenBytes(name) {
			return bad("invalid header field name")
		}
		if !validValue(value) {
			return bad("invalid header field value")
		}
		h.fields = append(h.fields, hfield{name, value})
		switch len(name) {
		case 4:
			if eqFold(name, "host") {
				hosts++
				h.host = value
			}
		case 6:
			if eqFold(name, "expect") {
				if !eqFold(value, "100-continue") {
					return &parseError{status: 417, msg: "unsupported expectation"}
				}
				h.expect100 = true
			}
		case 10, 16:
			if eqFold(name, "connection") || eqFold(name, "proxy-connection") {
				forEachToken(value, func(tok []byte) {
					switch {
					case eqFold(tok, "close"):
						h.close, closeTok = true, true
					case eqFold(tok, "keep-alive"):
						h.keepAlive = true
					case eqFold(tok, "upgrade"):
						h.upgrade = true
					}
					h.conn = append(h.conn, tok)
				})
			}
		case 14:
			if eqFold(name, "content-length") {
				var err error
				forEachToken(value, func(tok []byte) {
					n, ok := parseUint(tok)
					switch {
					case !ok:
						err = bad("invalid Content-Length")
					case h.contentLength >= 0 && h.contentLength != n:
						err = bad("conflicting Content-Length values")
					default:
						h.contentLength = n
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
			if eqFold(name, "transfer-encoding") {
				tes++
				if !eqFold(value, "chunked") {
					return &parseError{status: 501, msg: "unsupported Transfer-Encoding"}
				}
				h.chunked = true
			}
		}
	}
	// close wins over keep-alive, as in net/http (found by FuzzReqHead)
	if h.minor == 0 && h.keepAlive && !h.upgrade && !closeTok {
		h.close = false
	}
	if h.minor == 1 && !h.close {
		h.keepAlive = true
	}
	switch {
	case tes > 1:
		return bad("Transfer-Encoding sent more than once")
	case h.chunked && h.contentLength >= 0:
		return bad("both Content-Length and Transfer-Encoding")
	case h.chunked && h.minor == 0:
		return bad("Transfer-Encoding in an HTTP/1.0 request")
	case hosts > 1:
		return bad("more than one Host field")
	case hosts == 0 && h.minor == 1:
		return bad("HTTP/1.1 request without Host")
	case hosts == 1 && !validHost(h.host):
		return bad("invalid Host")
	}
	if h.upgrade {
		h.upgrade = false
		for _, f := range h.fields {
			if eqFold(f.name, "upgrade") && len(f.value) > 0 {
				h.upgrade = true
			}
		}
	}
	return h.normalizeTarget()
}

// normalizeTarget turns an absolute-form target into origin-form with
// its authority as the Host (RFC 9112 3.2.2), and checks the forms.
func (h *reqHead) normalizeTarget() error {
	t := h.target
	switch {
	case string(h.method) == "CONNECT": // any target form (origin-form too)
		return &parseError{status: 405, msg: "CONNECT is not supported"}
	case t[0] == '/':
		return nil
	case len(t) == 1 && t[0] == '*':
		if string(h.method) != "OPTIONS" {
			return bad("asterisk-form target for a method other than OPTIONS")
		}
		return nil
	}
	var rest []byte
	switch {
	case len(t) > 7 && eqFold(t[:7], "http://"):
		rest = t[7:]
	case len(t) > 8 && eqFold(t[:8], "https://"):
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
	if len(auth) == 0 || !validHost(auth) {
		return bad("malformed request target authority")
	}
	h.host = auth
	switch {
	case len(path) == 0:
		h.target = slash
	case path[0] == '?':
		h.target = append([]byte{'/'}, path...) // "http://h?q" → "/?q" (rare: allocates)
	default:
		h.target = path
	}
	return nil
}

var slash = []byte{'/'}

// chunked body decoding (RFC 9112 7.1), shared by both directions.

var errBadChunk = errors.New("malformed chunked encoding")

// maxChunkLine bounds a chunk-size line (with extensions) and a trailer
// line; past it the body is refused rather than buffered.
const maxChunkLine = 4096

// parseChunkLine parses a chunk-size line (without its CRLF): hex size,
// optional extensions.
func parseChunkLine(line []byte) (int64, error) {
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		if !validValue(line[i:]) {
			return 0, errBadChunk
		}
		// No whitespace before ';': RFC 9112 allows it, but net/http
		// refuses it, and an upstream must never read a body's framing
		// differently from gatehouse (found by FuzzChunked).
		line = line[:i]
	} else {
		for len(line) > 0 && (line[len(line)-1] == ' ' || line[len(line)-1] == '\t') {
			line = line[:len(line)-1] // trailing whitespace, as net/http trims it
		}
	}
	if len(line) == 0 || len(line) > 15 {
		return 0, errBadChunk
	}
	var n int64
	for _, c := range line {
		switch {
		case c >= '0' && c <= '9':
			n = n<<4 | int64(c-'0')
		case c >= 'a' && c <= 'f':
			n = n<<4 | int64(c-'a'+10)
		case c >= 'A' && c <= 'F':
			n = n<<4 | int64(c-'A'+10)
		default:
			return 0, errBadChunk
		}
	}
	return n, nil
}
