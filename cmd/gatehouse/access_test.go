package main

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// One access-log line per request and per stream, with what an operator
// needs to trace a report: route, SNI, status, bytes, upstream, TLS.
func TestAccessLog(t *testing.T) {
	m := newManualEnv(t)
	up := upstream(t, "A")
	echo := tcpUpstream(t)
	m.write("", m.route("web.test", up.URL, "")+m.route("db.test", echo, `mode = "tcp"`))
	m.run()

	res, err := client(m.httpsAddr(), m.roots, true).Get("https://web.test/some/path")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, res)
	m.logs.waitLog(t, 5*time.Second, "msg=access", "route=web.test", "sni=web.test", "method=GET", "path=/some/path",
		"proto=HTTP/2.0", `tls="TLS 1.3"`, "status=200", "upstream="+up.URL)

	c, err := testkit.DialTLS(m.httpsAddr(), "db.test", m.roots)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "hello")
	c.CloseWrite()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	c.Close()
	if !strings.Contains(string(got), "hello") {
		t.Fatalf("tcp echo answered %q", got)
	}
	m.logs.waitLog(t, 5*time.Second, "msg=access", "route=db.test", "mode=tcp", "sni=db.test", "bytes_in=5")
}
