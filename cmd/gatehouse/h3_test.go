package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

// h3Client is quic-go's HTTP/3 client reaching every name at udpAddr.
func h3Client(udpAddr string, roots *x509.CertPool) (*http.Client, *http3.Transport) {
	tr := &http3.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			return quic.DialAddr(ctx, udpAddr, tlsCfg, cfg)
		},
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, tr
}

// HTTP/3 on the https address's UDP port: the same routing by SNI, the
// same certificates, the same request handling (forwarding fields, 421),
// Alt-Svc on HTTP/1.1 and HTTP/2 responses of routes that serve it, and
// unrecognized_name inside QUIC's CONNECTION_CLOSE for names that have
// no HTTP/3 route.
func TestHTTP3(t *testing.T) {
	e := newCAEnv(t)
	a, b := upstream(t, "a"), upstream(t, "b")
	cfgPath := e.config(fmt.Sprintf("[[route]]\nhosts = [\"a.test\", \"a2.test\"]\nupstream = %q\n%s\n[[route]]\nhosts = [\"b.test\"]\nupstream = %q\nhttp3 = false\n%s",
		a.URL, e.certFor("a.test", "a2.test", "b.test"), b.URL, e.certFor("b.test")))
	e.start(cfgPath)
	addr := e.httpsAddr()
	_, port, _ := strings.Cut(addr, ":")
	wantAltSvc := `h3=":` + port + `"; ma=86400`

	byProto := func(p string) float64 {
		v, _ := sample(scrape(t, e.admLn.Addr().String()), "gatehouse_http_requests_by_protocol_total", `proto="`+p+`"`)
		return v
	}
	h1Before, h2Before, h3Before := byProto("h1"), byProto("h2"), byProto("h3")

	c, tr := h3Client(addr, e.roots)
	defer tr.Close()
	res, err := c.Get("https://a.test:" + port + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, res)
	if res.Proto != "HTTP/3.0" || !strings.Contains(body, "upstream=a host=a.test:"+port+" xff=127.0.0.1 xfp=https") {
		t.Fatalf("HTTP/3 request: proto %s, body %q", res.Proto, body)
	}
	if v := res.Header.Get("Alt-Svc"); v != "" {
		t.Fatalf("Alt-Svc on an HTTP/3 response: %q", v)
	}

	// :authority of a name the certificate covers but another route
	// serves: 421, as on HTTP/2
	req, _ := http.NewRequest("GET", "https://a.test:"+port+"/", nil)
	req.Host = "b.test"
	if res, err := c.Do(req); err != nil || res.StatusCode != http.StatusMisdirectedRequest {
		t.Fatalf("other route's :authority over h3: %v %v", res, err)
	} else {
		res.Body.Close()
	}

	for _, h2 := range []bool{false, true} {
		cl := client(addr, e.roots, h2)
		res, err := cl.Get("https://a.test/")
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, res)
		if got := res.Header.Get("Alt-Svc"); got != wantAltSvc {
			t.Errorf("%s response of an h3 route: Alt-Svc %q, want %q", res.Proto, got, wantAltSvc)
		}
		res, err = cl.Get("https://b.test/")
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, res)
		if got := res.Header.Get("Alt-Svc"); got != "" {
			t.Errorf("%s response of a route with http3 = false: Alt-Svc %q", res.Proto, got)
		}
	}

	// requests counted by the client's protocol: h3 (a GET and the 421),
	// h1 and h2 (two GETs each)
	// (counted when the server's side of a request ends: wait, bounded)
	testkit.WaitFor(t, 5*time.Second, "requests counted by protocol", func() error {
		for p, want := range map[string]float64{"h1": h1Before + 2, "h2": h2Before + 2, "h3": h3Before + 2} {
			if got := byProto(p); got != want {
				return fmt.Errorf("gatehouse_http_requests_by_protocol_total{proto=%q} = %v, want %v", p, got, want)
			}
		}
		return nil
	})

	// unknown name, and a route with HTTP/3 off: unrecognized_name
	// (TLS alert 112 = QUIC crypto error 0x170), no certificate
	for _, name := range []string{"nope.test", "b.test"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := quic.DialAddr(ctx, addr, &tls.Config{ServerName: name, RootCAs: e.roots, NextProtos: []string{"h3"}}, nil)
		cancel()
		if err == nil {
			conn.CloseWithError(0, "")
			t.Fatalf("%s: QUIC handshake succeeded", name)
		}
		var te *quic.TransportError
		if !errors.As(err, &te) || te.ErrorCode != 0x170 {
			t.Fatalf("%s: want crypto error 0x170 (unrecognized_name), got %v", name, err)
		}
	}
}

// A POST body and a large response cross HTTP/3 whole.
func TestHTTP3Bodies(t *testing.T) {
	e := newCAEnv(t)
	up := upstream(t, "a")
	e.start(e.config(fmt.Sprintf("[[route]]\nhosts = [\"a.test\"]\nupstream = %q\n%s", up.URL, e.certFor("a.test"))))
	c, tr := h3Client(e.httpsAddr(), e.roots)
	defer tr.Close()
	res, err := c.Post("https://a.test/", "application/octet-stream", strings.NewReader(strings.Repeat("x", 3<<20)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(b), "body=3145728") {
		t.Fatalf("3 MiB upload over h3: %q", b)
	}
}

// A reload treats QUIC connections as it treats TCP ones: requests on an
// open connection follow the new config for their name; when the name
// has no route any more, the open connection keeps its old route while
// new connections for the name are refused.
func TestHTTP3Reload(t *testing.T) {
	e := newCAEnv(t)
	upA, upB, other := upstream(t, "A"), upstream(t, "B"), upstream(t, "other")
	cert := e.certFor("a.test")
	route := func(up string) string {
		return fmt.Sprintf("[[route]]\nhosts = [\"a.test\"]\nupstream = %q\n%s\n", up, cert)
	}
	otherRoute := fmt.Sprintf("[[route]]\nhosts = [\"other.test\"]\nupstream = %q\n%s\n", other.URL, e.certFor("other.test"))
	in := e.start(e.config(route(upA.URL) + otherRoute))
	c, tr := h3Client(e.httpsAddr(), e.roots)
	defer tr.Close()
	expect := func(want string) {
		t.Helper()
		res, err := c.Get("https://a.test/")
		if err != nil {
			t.Fatal(err)
		}
		if body := readAll(t, res); !strings.Contains(body, "upstream="+want+" ") {
			t.Fatalf("want upstream %s, got %q", want, body)
		}
	}
	expect("A")
	if err := in.reload(e.config(route(upB.URL) + otherRoute)); err != nil {
		t.Fatal(err)
	}
	expect("B") // same QUIC connection, new upstream
	if err := in.reload(e.config(otherRoute)); err != nil {
		t.Fatal(err)
	}
	expect("A") // the open connection keeps the route it was accepted with, as TCP ones do
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := quic.DialAddr(ctx, e.httpsAddr(), &tls.Config{ServerName: "a.test", RootCAs: e.roots, NextProtos: []string{"h3"}}, nil)
	var te *quic.TransportError
	if !errors.As(err, &te) || te.ErrorCode != 0x170 {
		t.Fatalf("new QUIC connection for a removed name: %v, want unrecognized_name", err)
	}
}

// Shutdown drains HTTP/3 as it drains TCP: the request in flight gets its
// whole answer, new requests on the connection are not served (HTTP/3
// GOAWAY), and shutdown returns once the request is done, well within
// the drain limit.
func TestHTTP3Drain(t *testing.T) {
	e := newCAEnv(t)
	holding, release := make(chan struct{}), make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			close(holding)
			<-release
		}
		fmt.Fprint(w, "done "+r.URL.Path)
	}))
	t.Cleanup(up.Close)
	in := e.start(e.config(fmt.Sprintf("[[route]]\nhosts = [\"a.test\"]\nupstream = %q\n%s", up.URL, e.certFor("a.test"))))
	c, tr := h3Client(e.httpsAddr(), e.roots)
	defer tr.Close()
	got := make(chan string, 1)
	go func() {
		res, err := c.Get("https://a.test/hold")
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		got <- string(b)
	}()
	select {
	case <-holding:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not reach the upstream")
	}
	stopped := make(chan error, 1)
	began := time.Now()
	go func() { stopped <- in.shutdown(20 * time.Second) }()
	time.Sleep(300 * time.Millisecond) // the GOAWAY is out
	if res, err := c.Get("https://a.test/late"); err == nil {
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		t.Errorf("a request after the GOAWAY was served: %d %q", res.StatusCode, b)
	}
	close(release)
	if body := <-got; body != "done /hold" {
		t.Fatalf("the request in flight during the drain got %q", body)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("shutdown did not return after the last request")
	}
	if d := time.Since(began); d > 10*time.Second {
		t.Errorf("drain took %v", d)
	}
}
