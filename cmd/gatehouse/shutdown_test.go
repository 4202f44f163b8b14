package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// Graceful shutdown: in-flight requests finish during the drain, new
// connections are refused at once, and streams still open at the drain
// deadline (tcp, WebSocket) are closed then: the drain is bounded.
func TestGracefulShutdown(t *testing.T) {
	m := newManualEnv(t)
	arrived := make(chan struct{}, 1)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		time.Sleep(time.Second)
		io.WriteString(w, "slow answer")
	}))
	t.Cleanup(slow.Close)
	m.write("", m.route("slow.test", slow.URL, "")+m.route("db.test", tcpUpstream(t), `mode = "tcp"`)+m.route("ws.test", wsEcho(t), ""))
	in := m.run()

	// a tcp stream and a WebSocket, open and working
	tcp, err := testkit.DialTLS(m.httpsAddr(), "db.test", m.roots)
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	db := newLineConn(tcp)
	if err := db.roundTrip("before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	ws := dialWS(t, m.httpsAddr(), "ws.test", m.roots)
	defer ws.Close()
	if err := wsRoundTrip(ws, "before"); err != nil {
		t.Fatal(err)
	}

	// a slow request in flight
	type result struct {
		body string
		err  error
	}
	slowRes := make(chan result, 1)
	go func() {
		res, err := client(m.httpsAddr(), m.roots, false).Get("https://slow.test/")
		if err != nil {
			slowRes <- result{err: err}
			return
		}
		b, err := io.ReadAll(res.Body)
		res.Body.Close()
		slowRes <- result{string(b), err}
	}()
	<-arrived

	const drain = 3 * time.Second
	began := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- in.shutdown(drain) }()

	testkit.WaitFor(t, 2*time.Second, "new connections refused", func() error {
		c, err := net.DialTimeout("tcp", m.httpsAddr(), time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("connected after shutdown began")
		}
		return nil
	})

	r := <-slowRes
	if r.err != nil || r.body != "slow answer" {
		t.Errorf("in-flight request during drain: %q, %v; want it completed", r.body, r.err)
	}
	// streams still work during the drain
	if err := db.roundTrip("during drain", 2*time.Second); err != nil {
		t.Errorf("tcp stream during drain: %v", err)
	}
	if err := wsRoundTrip(ws, "during drain"); err != nil {
		t.Errorf("WebSocket during drain: %v", err)
	}

	// and are closed at the drain deadline
	tcpClosed, wsClosed := make(chan time.Duration, 1), make(chan time.Duration, 1)
	go func() {
		_ = tcp.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := db.r.ReadByte()
		if err == nil {
			t.Error("tcp stream: data after the drain deadline")
		}
		tcpClosed <- time.Since(began)
	}()
	go func() {
		var msg string
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		err := websocket.Message.Receive(ws, &msg)
		if err == nil {
			t.Error("WebSocket: message after the drain deadline")
		}
		wsClosed <- time.Since(began)
	}()
	for name, ch := range map[string]chan time.Duration{"tcp stream": tcpClosed, "WebSocket": wsClosed} {
		took := <-ch
		if took < drain-200*time.Millisecond || took > drain+2*time.Second {
			t.Errorf("%s closed %v after shutdown began, want at the %v drain deadline", name, took, drain)
		}
	}
	select {
	case err := <-stopped:
		if err == nil || !strings.Contains(err.Error(), "closed 3 stream connections") {
			t.Errorf("shutdown returned %v, want it to report the 3 stream connections it closed (tcp client+upstream, WebSocket)", err)
		}
		t.Logf("shutdown after %v: %v", time.Since(began).Round(time.Millisecond), err)
	case <-time.After(drain + 3*time.Second):
		t.Fatal("shutdown did not return after its drain deadline")
	}
}

// A drain with nothing left open ends at once, not at its deadline.
func TestShutdownEndsWhenDrained(t *testing.T) {
	m := newManualEnv(t)
	m.write("", m.route("web.test", upstream(t, "A").URL, "")+m.route("db.test", tcpUpstream(t), `mode = "tcp"`))
	in := m.run()
	tcp, err := testkit.DialTLS(m.httpsAddr(), "db.test", m.roots)
	if err != nil {
		t.Fatal(err)
	}
	if err := newLineConn(tcp).roundTrip("x", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	res, err := client(m.httpsAddr(), m.roots, true).Get("https://web.test/")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, res) // an idle keep-alive HTTP/2 connection stays open
	go func() { time.Sleep(300 * time.Millisecond); tcp.Close() }()
	began := time.Now()
	if err := in.shutdown(20 * time.Second); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Errorf("shutdown took %v with nothing in flight once the stream closed", took)
	}
}

func dialWS(t testing.TB, addr, name string, roots *x509.CertPool) *websocket.Conn {
	t.Helper()
	cfg, err := websocket.NewConfig("wss://"+name+"/echo", "https://"+name+"/")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := dialTLSConfig(addr, &tls.Config{ServerName: name, RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.NewClient(cfg, conn)
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	return ws
}

func wsRoundTrip(ws *websocket.Conn, msg string) error {
	_ = ws.SetDeadline(time.Now().Add(5 * time.Second))
	if err := websocket.Message.Send(ws, msg); err != nil {
		return err
	}
	var got string
	if err := websocket.Message.Receive(ws, &got); err != nil {
		return err
	}
	if got != "echo: "+msg {
		return fmt.Errorf("WebSocket echo %q, want %q", got, "echo: "+msg)
	}
	return nil
}
