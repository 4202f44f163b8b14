package main

// HTTP/3 modes, with quic-go's client (Debian's h2load has no HTTP/3):
//
//	h3         requests over -c QUIC connections with -m streams each
//	           (concurrent requests per connection), keep-alive
//	h3hs       full QUIC handshakes (no session tickets, no 0-RTT), one
//	           request each
//	h3hostile  QUIC Initials carrying a ClientHello with an unknown SNI,
//	           at full rate: each is refused (CONNECTION_CLOSE)

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
)

var streams = flag.Int("m", 16, "h3: concurrent requests per connection")

type reqResult struct {
	Requests int64   `json:"requests"`
	Errors   int64   `json:"errors"`
	Seconds  float64 `json:"seconds"`
	Rate     float64 `json:"rate"`
	Error    string  `json:"first_error,omitempty"`
}

func h3TLS(name string) *tls.Config {
	return &tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"h3"}, CurvePreferences: curves()}
}

// h3Transport dials every request's connection to *addr through qt, one
// QUIC transport (UDP socket) that many connections share, as quic-go
// requires: two transports on one socket steal each other's packets.
func h3Transport(qt *quic.Transport) *http3.Transport {
	return &http3.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, CurvePreferences: curves()},
		Dial: func(ctx context.Context, _ string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			ua, err := net.ResolveUDPAddr("udp", *addr)
			if err != nil {
				return nil, err
			}
			return qt.Dial(ctx, ua, tlsCfg, cfg)
		},
	}
}

// quicTransport opens a loopback UDP socket for one worker.
func quicTransport() (*quic.Transport, error) {
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	return &quic.Transport{Conn: udp}, nil
}

func get(c *http.Client, url string) error {
	res, err := c.Get(url)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if err == nil && res.StatusCode != 200 {
		err = fmt.Errorf("HTTP %d", res.StatusCode)
	}
	return err
}

func runH3() (any, error) {
	ns, err := names()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(*addr)
	url := "https://" + ns[0] + ":" + port + *path
	var ok, bad atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(*dur)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		qt, err := quicTransport()
		if err != nil {
			return nil, err
		}
		defer qt.Close()
		tr := h3Transport(qt)
		defer tr.Close()
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		for s := 0; s < *streams; s++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					if err := get(c, url); err != nil {
						bad.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						continue
					}
					ok.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	r := reqResult{Requests: ok.Load(), Errors: bad.Load(), Seconds: secs, Rate: float64(ok.Load()) / secs}
	if e, _ := firstErr.Load().(string); e != "" {
		r.Error = e
	}
	return r, nil
}

func runH3Handshake() (any, error) {
	ns, err := names()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(*addr)
	var ok, bad atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(*dur)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			qt, err := quicTransport()
			if err != nil {
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			defer qt.Close()
			for time.Now().Before(deadline) {
				tr := h3Transport(qt) // a new HTTP/3 transport: a new connection, no ticket
				c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
				err := get(c, "https://"+ns[0]+":"+port+*path)
				tr.Close()
				if err != nil {
					bad.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	r := hsResult{Conns: ok.Load(), Errors: bad.Load(), Seconds: secs, Rate: float64(ok.Load()) / secs, Curve: "x25519"}
	if e, _ := firstErr.Load().(string); e != "" {
		r.Error = e
	}
	return r, nil
}

type h3HostileResult struct {
	Conns    int64   `json:"conns"`    // Initials answered with a refusal
	Served   int64   `json:"served"`   // handshakes that succeeded (must be 0)
	Timeouts int64   `json:"timeouts"` // no answer within the handshake timeout
	Seconds  float64 `json:"seconds"`
	Rate     float64 `json:"rate"`
	Error    string  `json:"first_error,omitempty"`
}

// runH3Hostile dials QUIC with names the proxy does not route. Each dial
// is a real Initial with a full ClientHello (key shares included), so it
// costs the client a key generation: the client, not the proxy, may be
// the bottleneck; read CPU per refused Initial.
func runH3Hostile() (any, error) {
	var refused, served, timeouts atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(*dur)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			qt, err := quicTransport()
			if err != nil {
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			defer qt.Close()
			ua, _ := net.ResolveUDPAddr("udp", *addr)
			for i := 0; time.Now().Before(deadline); i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				c, err := qt.Dial(ctx, ua, h3TLS(fmt.Sprintf("nope-%d-%d.invalid", w, i)), &quic.Config{HandshakeIdleTimeout: 3 * time.Second})
				cancel()
				var te *quic.TransportError
				var ie *quic.IdleTimeoutError
				switch {
				case err == nil:
					served.Add(1)
					c.CloseWithError(0, "")
				case errors.As(err, &te):
					refused.Add(1)
				case errors.As(err, &ie), errors.Is(err, context.DeadlineExceeded):
					timeouts.Add(1)
				default:
					firstErr.CompareAndSwap(nil, err.Error())
					timeouts.Add(1)
				}
			}
		}(w)
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	r := h3HostileResult{Conns: refused.Load(), Served: served.Load(), Timeouts: timeouts.Load(), Seconds: secs, Rate: float64(refused.Load()) / secs}
	if e, _ := firstErr.Load().(string); e != "" {
		r.Error = e
	}
	return r, nil
}
