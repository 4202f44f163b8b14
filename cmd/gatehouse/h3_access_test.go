package main

import (
	"strings"
	"testing"
	"time"
)

// The binary's access log gets exactly one line per HTTP/3 request, with
// proto HTTP/3.0, as it does for HTTP/1.1 and HTTP/2 requests.
func TestHTTP3AccessLog(t *testing.T) {
	m := newManualEnv(t)
	up := upstream(t, "A")
	m.write("", m.route("web.test", up.URL, ""))
	m.run()
	addr := m.httpsAddr()
	_, port, _ := strings.Cut(addr, ":")
	c, tr := h3Client(addr, m.roots)
	defer tr.Close()
	for _, p := range []string{"/h3/one", "/h3/two"} {
		res, err := c.Get("https://web.test:" + port + p)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, res)
		if res.Proto != "HTTP/3.0" {
			t.Fatalf("%s: served over %s", p, res.Proto)
		}
		m.logs.waitLog(t, 5*time.Second, "msg=access", "route=web.test", "sni=web.test", "method=GET", "path="+p,
			"proto=HTTP/3.0", `tls="TLS 1.3"`, "status=200", "upstream="+up.URL)
	}
	time.Sleep(200 * time.Millisecond) // a duplicate line would be written by now
	for _, p := range []string{"/h3/one", "/h3/two"} {
		if n := m.logs.count("msg=access", "path="+p+" "); n != 1 {
			t.Errorf("%d access lines for %s, want 1", n, p)
		}
	}
}
