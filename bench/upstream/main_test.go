package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	mathbig "math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// get fetches path twice through c and checks the body size, the
// protocol and that the second request reused the first's connection.
func get(t *testing.T, c *http.Client, base, proto string) {
	t.Helper()
	reused := false
	for i, tc := range []struct {
		path string
		n    int
	}{{"/", 100}, {"/1m", 1 << 20}} {
		req, _ := http.NewRequest("GET", base+tc.path, nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(ci httptrace.GotConnInfo) { reused = ci.Reused }}))
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || res.StatusCode != 200 || len(b) != tc.n || res.Proto != proto {
			t.Fatalf("GET %s: %v %d %s, %d bytes; want 200 %s, %d bytes", tc.path, err, res.StatusCode, res.Proto, len(b), proto, tc.n)
		}
		if i == 1 && !reused {
			t.Errorf("GET %s: connection not reused (keep-alive)", tc.path)
		}
	}
}

func TestTLSUpstream(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: mathbig.NewInt(1), Subject: pkix.Name{CommonName: "up"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)

	if _, err := listen("127.0.0.1:0", certFile, "", false); err == nil {
		t.Error("-tls-cert without -tls-key accepted")
	}
	if _, err := listen("127.0.0.1:0", certFile, keyFile, true); err == nil {
		t.Error("-tls-cert with -h2c accepted")
	}
	ln, err := listen("127.0.0.1:0", certFile, keyFile, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveH1(ln)
	pool := x509.NewCertPool()
	cert, _ := x509.ParseCertificate(der)
	pool.AddCert(cert)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	// HTTP/1.1 even though the client offers h2: the upstream's ALPN is http/1.1 only
	get(t, &http.Client{Transport: tr, Timeout: 10 * time.Second}, "https://"+ln.Addr().String(), "HTTP/1.1")
}

func TestH2CUpstream(t *testing.T) {
	ln, err := listen("127.0.0.1:0", "", "", true)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveH2C(ln)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	get(t, &http.Client{Transport: tr, Timeout: 10 * time.Second}, "http://"+ln.Addr().String(), "HTTP/2.0")
}
