package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// A 502 is logged with the upstream it tried, on every path: the own
// HTTP/1.1 and HTTP/2 engines and net/http (a PROXY-protocol route), in
// the warning and in the access line. (Issue 14: HTTP/2 logged
// upstream="" when the only upstream refused the connection.)
func TestBadGatewayLogNamesUpstream(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + dead.Addr().String()
	dead.Close() // connection refused from now on

	ca, err := acmetest.NewTestCA("502 log root")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, _, err := ca.Issue([]string{"web.test", "pp.test"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	cfg := &routes.Config{Routes: []routes.Route{
		{Hosts: []string{"web.test"}, Upstream: deadURL},
		{Hosts: []string{"pp.test"}, Upstream: deadURL, ProxyProtocol: "v1"},
	}}
	cfg.ApplyDefaults()
	logs := &testkit.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	s := New(Options{Certs: fixedCerts{&kp}, Logger: log, AccessLog: log.With("log", "access")})
	serveTest(t, s, cfg, false)
	https, _ := s.Addrs()

	for _, host := range []string{"web.test", "pp.test"} {
		for _, h2 := range []bool{false, true} {
			proto := "HTTP/1.1"
			if h2 {
				proto = "HTTP/2.0"
			}
			tr := &http.Transport{
				TLSClientConfig:   &tls.Config{RootCAs: roots},
				ForceAttemptHTTP2: h2,
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, "tcp", https.String())
				},
			}
			if !h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			path := "/" + strings.TrimSuffix(host, ".test") + "-" + strings.ReplaceAll(proto, "/", "")
			res, err := c.Get("https://" + host + path)
			if err != nil {
				t.Fatalf("%s %s: %v", host, proto, err)
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			tr.CloseIdleConnections()
			if res.StatusCode != http.StatusBadGateway || res.Proto != proto {
				t.Errorf("%s: %s %d, want %s 502", host, res.Proto, res.StatusCode, proto)
			}
			// the access line may follow the response by a moment
			var warn, access int
			var bad []string
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				warn, access, bad = 0, 0, nil
				for _, line := range strings.Split(logs.String(), "\n") {
					if !strings.Contains(line, "path="+path+" ") {
						continue
					}
					switch {
					case strings.Contains(line, `msg="upstream request failed"`):
						warn++
					case strings.Contains(line, "msg=access"):
						access++
					default:
						continue
					}
					if !strings.Contains(line, "upstream="+deadURL+" ") {
						bad = append(bad, line)
					}
				}
				if (warn >= 1 && access >= 1) || time.Now().After(deadline) {
					break
				}
			}
			for _, line := range bad {
				t.Errorf("%s %s: log line lacks upstream=%s:\n%s", host, proto, deadURL, line)
			}
			if warn != 1 || access != 1 {
				t.Errorf("%s %s: %d warnings and %d access lines, want 1 and 1:\n%s", host, proto, warn, access, logs.String())
			}
		}
	}
}

// serveTest installs cfg's table on s, listens on kernel-picked loopback
// ports (plain HTTP too when withHTTP) and serves until the test ends.
func serveTest(t testing.TB, s *Server, cfg *routes.Config, withHTTP bool) {
	t.Helper()
	httpAddr := ""
	if withHTTP {
		httpAddr = "127.0.0.1:0"
	}
	if err := s.Listen("127.0.0.1:0", httpAddr); err != nil {
		t.Fatal(err)
	}
	if err := s.SetTable(routes.NewTable(cfg)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = s.Serve(); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		<-done
	})
}
