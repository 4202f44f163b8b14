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
	now := time.Now().Unix()
	if d := cachedDate.Load(); d != nil && d.sec == now {
		return d.s
	}
	d := &dateString{sec: now, s: time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	cachedDate.Store(d)
	return d.s
}

type dateString struct {
	sec int64
	s   string
}

var cachedDate atomic.Pointer[dateString]
