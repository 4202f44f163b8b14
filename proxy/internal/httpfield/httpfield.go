// Package httpfield holds what the HTTP engines and the request policy
// both need to know of header fields: which belong to one connection
// only, and the Date value. One copy, used by proxy/ and h2server.
package httpfield

import (
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// HopByHop reports the fields of a single connection (as httputil's
// ReverseProxy removes them), which HTTP/2 also forbids.
func HopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// ConnListed reports whether the Connection field values conn name k.
func ConnListed(conn []string, k string) bool {
	for _, v := range conn {
		for f := range strings.SplitSeq(v, ",") {
			if http.CanonicalHeaderKey(strings.TrimSpace(f)) == k {
				return true
			}
		}
	}
	return false
}

// Date is the current time as a Date field, formatted once a second.
func Date() string {
	// the cached value holds until its second ends on the monotonic
	// clock (time.Until reads only that one: half a time.Now)
	if d := cachedDate.Load(); d != nil && time.Until(d.until) > 0 {
		return d.s
	}
	now := time.Now()
	d := &dateString{until: now.Add(time.Second - time.Duration(now.Nanosecond())),
		s: now.UTC().Format(http.TimeFormat)}
	cachedDate.Store(d)
	return d.s
}

type dateString struct {
	until time.Time // the next second's start, with a monotonic reading
	s     string
}

var cachedDate atomic.Pointer[dateString]
