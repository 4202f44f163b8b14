package h2server

import (
	"github.com/gatehouse-proxy/gatehouse/proxy/internal/httpfield"
	"net/http"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/net/http2/hpack"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
)

// Field values and names: the checks RFC 9113 asks of a request's, and
// the spellings a response's take.

// valueMalformed reports whether an HTTP/2 field value starts or ends
// with SP or HTAB (RFC 9113 §8.2.1: the request is malformed).
func valueMalformed(v string) bool {
	return len(v) > 0 && (v[0] == ' ' || v[0] == '\t' || v[len(v)-1] == ' ' || v[len(v)-1] == '\t')
}

// contentLength parses an HTTP/2 content-length: 1*DIGIT (RFC 9110
// §8.6), no sign, no whitespace, within int64.
func contentLength(v string) (int64, bool) {
	return h1wire.ParseUint(unsafe.Slice(unsafe.StringData(v), len(v)))
}

// encodeFields HPACK-encodes h in lower case, less the fields HTTP/2
// forbids or a proxy must not forward (hop-by-hop, and those the
// Connection field names). It reports whether h had a Date.
func encodeFields(enc *hpack.Encoder, h http.Header) (date bool) {
	conn := h["Connection"]
	for k, vs := range h {
		if httpfield.HopByHop(k) || len(conn) > 0 && httpfield.ConnListed(conn, k) {
			continue
		}
		if k == "Date" {
			date = true
		}
		name := lowerH2(k)
		for _, v := range vs {
			enc.WriteField(hpack.HeaderField{Name: name, Value: v})
		}
	}
	return date
}

// Common field names, both ways: HPACK wants lower case, net/http's
// header maps canonical case. A table avoids an allocation per field.
var (
	h2Lower = map[string]string{}
	h2Canon = map[string]string{}
)

func init() {
	for _, k := range []string{"Accept", "Accept-Charset", "Accept-Encoding", "Accept-Language", "Accept-Ranges",
		"Access-Control-Allow-Credentials", "Access-Control-Allow-Headers", "Access-Control-Allow-Methods",
		"Access-Control-Allow-Origin", "Access-Control-Expose-Headers", "Access-Control-Max-Age",
		"Access-Control-Request-Headers", "Access-Control-Request-Method", "Age", "Allow", "Authorization",
		"Cache-Control", "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
		"Content-Location", "Content-Range", "Content-Security-Policy", "Content-Type", "Cookie", "Date", "Dnt", "Etag",
		"Expect", "Expires", "From", "Grpc-Message", "Grpc-Status", "If-Match", "If-Modified-Since", "If-None-Match",
		"If-Range", "If-Unmodified-Since", "Last-Modified", "Link", "Location", "Max-Forwards", "Origin", "Pragma",
		"Priority", "Range", "Referer", "Refresh", "Retry-After", "Sec-Fetch-Dest", "Sec-Fetch-Mode", "Sec-Fetch-Site",
		"Sec-Fetch-User", "Sec-Ch-Ua", "Sec-Ch-Ua-Mobile", "Sec-Ch-Ua-Platform", "Server", "Set-Cookie",
		"Strict-Transport-Security", "Te", "Trailer", "Upgrade-Insecure-Requests", "User-Agent", "Vary", "Via",
		"Www-Authenticate", "X-Content-Type-Options", "X-Frame-Options", "X-Request-Id", "X-Requested-With",
		"X-Xss-Protection"} {
		l := strings.ToLower(k)
		h2Lower[k], h2Canon[l] = l, k
	}
}

func lowerH2(k string) string {
	if l, ok := h2Lower[k]; ok {
		return l
	}
	return strings.ToLower(k)
}

// CanonicalKey is a lower-case field name as an http.Header key.
func CanonicalKey(l string) string {
	if k, ok := h2Canon[l]; ok {
		return k
	}
	return http.CanonicalHeaderKey(l)
}

// statusStrings are the :status values, made once.
var statusStrings [600]string

func statusString(code int) string {
	if code >= 100 && code < len(statusStrings) {
		return statusStrings[code]
	}
	return strconv.Itoa(code)
}

func init() {
	for i := 100; i < len(statusStrings); i++ {
		statusStrings[i] = strconv.Itoa(i)
	}
}

// lowerBytes maps field names in their usual spellings (canonical,
// and already lower case) to lower case.
var lowerBytes = map[string]string{}

func init() {
	for k, l := range h2Lower {
		lowerBytes[k] = l
		lowerBytes[l] = l
	}
}

// CanonicalBytes is a field name as an http.Header key, with no
// allocation for common names.
func CanonicalBytes(b []byte) string {
	if l, ok := lowerBytes[string(b)]; ok {
		return h2Canon[l]
	}
	return http.CanonicalHeaderKey(string(b))
}

// lowerName is a response field name in lower case, as a string shared
// across responses; mu is held.
func (c *Conn) lowerName(b []byte) string {
	if k, ok := lowerBytes[string(b)]; ok {
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
func (c *Conn) intern(b []byte) string {
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
