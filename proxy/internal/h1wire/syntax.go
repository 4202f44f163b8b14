// Package h1wire is gatehouse's HTTP/1.1 wire code, apart from any
// policy: the head scanner and the strict parsers of request and
// response heads (RFC 9112 §2–§6), which read their field lines, as the
// chunked framer reads trailer sections, with one field-line scanner
// (scanField); the body framer (Content-Length, chunked, read to close:
// RFC 9112 §6.3, §7.1) over a pooled read buffer; and the writers of
// heads and chunks.
//
// A proxy that parses more leniently than the upstream behind it is how
// request smuggling happens, so anything ambiguous is refused: bare CR
// or LF, obs-fold, whitespace before a colon, invalid names and values,
// Content-Length together with Transfer-Encoding, conflicting
// Content-Lengths. The parsers are fuzzed against net/http
// (http.ReadRequest, http.ReadResponse, httputil.NewChunkedReader): on
// whatever they accept, net/http agrees. Parsed fields are slices of the
// caller's read buffer: nothing is copied and no map is built per
// message.
//
// What a message means to gatehouse (which fields are hop-by-hop, what
// is forwarded, which route serves a Host, the limits) is package
// proxy's: it reads the parsed heads and composes its heads with the
// writers here. No sockets here either: a BufReader fills from an
// io.Reader.
package h1wire

import (
	"bytes"
	"net/netip"
)

// tchar reports whether c may appear in a token (RFC 9110 §5.6.2).
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

// IsToken reports whether b is a token (RFC 9110 §5.6.2): a method or
// a field name.
func IsToken(b []byte) bool {
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

// ValidValue reports whether b may be a field value (RFC 9110 §5.5):
// VCHAR, obs-text, SP, HTAB; no other CTL.
func ValidValue(b []byte) bool {
	for _, c := range b {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// ValidTarget reports whether b may be a request-target (RFC 9112
// §3.2): no CTL, space or non-ASCII byte, and every % starts a
// percent-encoded byte (net/http refused the rest).
func ValidTarget(b []byte) bool {
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

// TrimOWS trims optional whitespace (SP, HTAB: RFC 9110 §5.6.3) from
// both ends of b, as around a field value (RFC 9112 §5.1).
func TrimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// EqFold reports whether the ASCII field name (or token) b equals the
// lower-case constant lower, ignoring case (field names are
// case-insensitive: RFC 9110 §5.1).
func EqFold(b []byte, lower string) bool {
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

// ParseUint parses a non-empty decimal without sign, within int64: a
// Content-Length is 1*DIGIT (RFC 9110 §8.6), and so is a status code.
func ParseUint(b []byte) (int64, bool) {
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

// ForEachToken calls f for each non-empty element of the list v
// (RFC 9110 §5.6.1: comma-separated, OWS around, empty elements
// ignored).
func ForEachToken(v []byte, f func(tok []byte)) {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		var tok []byte
		if i < 0 {
			tok, v = v, nil
		} else {
			tok, v = v[:i], v[i+1:]
		}
		if tok = TrimOWS(tok); len(tok) > 0 {
			f(tok)
		}
	}
}

// ValidHost reports whether a Host field (or :authority, or an
// absolute-form target's authority) is uri-host [ ":" port ]
// (RFC 9110 §7.2, RFC 3986 §3.2.2–3.2.3), as strictly as a name a route
// can serve:
//   - uri-host is a bracketed IPv6 address (no zone, no IPvFuture), or a
//     reg-name / IPv4 address of unreserved characters only (letters,
//     digits, "-", ".", "_", "~"): the sub-delims RFC 3986 also allows
//     in a reg-name ("," ";" "=" …) and percent-encoding never name a
//     route, and are how a forwarded host list is forged
//     ("app.test:,evil.example");
//   - a port is 1 to 5 digits, at most 65535 (RFC 3986 allows an empty
//     port; gatehouse refuses "host:", as nothing sends it).
//
// The empty value is valid here (an HTTP/1.0 request without Host); the
// route check answers it. Anything else fails with 400 (RFC 9112 §3.2),
// so the Host, X-Forwarded-Host and Forwarded host= an upstream gets are
// always a value that passed this check.
func ValidHost(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	var port []byte
	hasPort := false
	if b[0] == '[' {
		end := -1
		for i, c := range b {
			if c == ']' {
				end = i
				break
			}
		}
		if end < 0 {
			return false
		}
		a, err := netip.ParseAddr(string(b[1:end]))
		if err != nil || !a.Is6() || a.Zone() != "" {
			return false
		}
		rest := b[end+1:]
		if len(rest) > 0 {
			if rest[0] != ':' {
				return false
			}
			port, hasPort = rest[1:], true
		}
	} else {
		host := b
		if i := bytes.LastIndexByte(b, ':'); i >= 0 {
			host, port, hasPort = b[:i], b[i+1:], true
		}
		if len(host) == 0 {
			return false
		}
		for _, c := range host {
			if !regNameChar[c] {
				return false
			}
		}
	}
	if !hasPort {
		return true
	}
	if len(port) == 0 || len(port) > 5 {
		return false
	}
	n := 0
	for _, c := range port {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n <= 65535
}

// regNameChar: RFC 3986 unreserved characters.
var regNameChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "-._~" {
		t[c] = true
	}
	return
}()
