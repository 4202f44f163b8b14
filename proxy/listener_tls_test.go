package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Terminated connections get TLS 1.2 at least and, in TLS 1.2, only
// forward-secret AEAD suites (Mozilla "intermediate"): a client that
// offers only CBC suites, or only TLS 1.1, is refused; each AEAD suite
// and TLS 1.3 work. Checked with Go's client and with openssl s_client.
func TestTLSPosture(t *testing.T) {
	w := startH1World(t, echoUpstream(t).URL)
	hs := func(cfg *tls.Config) (tls.ConnectionState, error) {
		cfg.ServerName, cfg.RootCAs = "web.test", w.roots
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", w.addr, cfg)
		if err != nil {
			return tls.ConnectionState{}, err
		}
		defer c.Close()
		return c.ConnectionState(), nil
	}
	for _, cs := range []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
		tls.TLS_RSA_WITH_AES_128_GCM_SHA256, // AEAD, but no forward secrecy
		tls.TLS_RSA_WITH_AES_128_CBC_SHA,
	} {
		if st, err := hs(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{cs}}); err == nil {
			t.Errorf("TLS 1.2 with only %s: handshake succeeded (%s), want refused", tls.CipherSuiteName(cs), tls.CipherSuiteName(st.CipherSuite))
		}
	}
	for _, cs := range []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	} {
		st, err := hs(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{cs}})
		if err != nil || st.CipherSuite != cs || st.Version != tls.VersionTLS12 {
			t.Errorf("TLS 1.2 with %s: %v (got %s), want it negotiated", tls.CipherSuiteName(cs), err, tls.CipherSuiteName(st.CipherSuite))
		}
	}
	if _, err := hs(&tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
		t.Error("TLS 1.1: handshake succeeded, want refused")
	}
	if st, err := hs(&tls.Config{}); err != nil || st.Version != tls.VersionTLS13 {
		t.Errorf("default client: %v, version %x; want TLS 1.3", err, st.Version)
	}

	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (apt-get install openssl): the s_client half is not run")
	}
	sclient := func(cipher string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, "openssl", "s_client", "-connect", w.addr, "-servername", "web.test",
			"-tls1_2", "-cipher", cipher).CombinedOutput() // stdin is empty: it closes after the handshake
		return string(out)
	}
	if out := sclient("ECDHE-ECDSA-AES128-SHA"); strings.Contains(out, "Cipher is ECDHE") {
		t.Errorf("openssl -cipher ECDHE-ECDSA-AES128-SHA was served:\n%s", out)
	} else if !strings.Contains(out, "alert") && !strings.Contains(out, "handshake failure") {
		t.Errorf("openssl -cipher ECDHE-ECDSA-AES128-SHA: no refusal seen:\n%s", out)
	}
	if out := sclient("ECDHE-ECDSA-AES128-GCM-SHA256"); !strings.Contains(out, "Cipher is ECDHE-ECDSA-AES128-GCM-SHA256") {
		t.Errorf("openssl -cipher ECDHE-ECDSA-AES128-GCM-SHA256 not served:\n%s", out)
	}
}
