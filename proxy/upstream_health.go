package proxy

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// Active health checks. Each upstream of a route with checks on (an
// http route with health_path; a tcp/passthrough route with
// health_interval) is probed every interval in the background:
//   - http: GET health_path with the route's first host name as Host
//     (apps that route by Host answer as they would for a client), no
//     redirects followed; 2xx and 3xx are healthy. A fresh connection
//     each time, so the probe also proves new connections are accepted.
//   - tcp/passthrough: a TCP connect (then close), as HAProxy's default.
//
// With proxy_protocol set, the probe's connection starts with a LOCAL
// header (v1 "PROXY UNKNOWN"), which tells the upstream it is the
// proxy's own connection, not a client's.
//
// An upstream leaves rotation after healthFall consecutive failed
// probes and returns after healthRise successes, so one lost probe does
// not flap it. Upstreams start in rotation: traffic flows from the
// first moment, and passive health covers the time before the first
// verdict. The checks stop when the route is retired on reload.
const (
	healthFall = 2
	healthRise = 2
)

// healthChecks is a route's checker state.
type healthChecks struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (rs *routeState) startHealth() {
	r := rs.entry.Route
	if !r.HealthChecked() {
		return
	}
	interval, timeout := r.HealthTimings()
	probe := rs.tcpProbe
	if rs.mode == routes.ModeHTTP {
		probe = rs.httpProbe(r.HealthPath)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rs.health.cancel = cancel
	for _, up := range rs.bal.ups {
		rs.health.wg.Add(1)
		go func() {
			defer rs.health.wg.Done()
			rs.checkLoop(ctx, up, interval, timeout, probe)
		}()
	}
}

func (rs *routeState) stopHealth() {
	if rs.health.cancel != nil {
		rs.health.cancel()
		rs.health.wg.Wait()
	}
}

func (rs *routeState) checkLoop(ctx context.Context, up *upstream, interval, timeout time.Duration,
	probe func(context.Context, *upstream) error) {
	var okRun, failRun int
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := probe(pctx, up)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failRun, okRun = 0, okRun+1
			if up.checkDown.Load() && okRun >= healthRise {
				up.fails.Store(0)
				up.downUntil.Store(0)
				up.checkDown.Store(false)
				rs.log.Info("upstream passed health checks; back in rotation", "upstream", up.Raw)
			}
		} else {
			okRun, failRun = 0, failRun+1
			if !up.checkDown.Load() && failRun >= healthFall {
				up.checkDown.Store(true)
				rs.log.Warn("upstream failed health checks; out of rotation", "upstream", up.Raw,
					"failures", failRun, "error", err)
			}
		}
		// ±10% jitter so the upstreams of many routes are not probed in step
		t.Reset(interval - interval/10 + rand.N(interval/5+1))
	}
}

// httpProbe returns the http check: a client of its own (no keep-alive,
// the route's TLS settings and protocol, the LOCAL PROXY header).
func (rs *routeState) httpProbe(path string) func(context.Context, *upstream) error {
	tr := rs.transport.Clone()
	tr.DisableKeepAlives = true
	tr.DialContext = rs.dialCheck
	client := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	host := ""
	for _, h := range rs.entry.Hosts {
		if h != "*" && h[0] != '*' {
			host = h
			break
		}
	}
	return func(ctx context.Context, up *upstream) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, rs.scheme+"://"+up.target.Host+path, nil)
		if err != nil {
			return err
		}
		if host != "" {
			req.Host = host
		}
		req.Header.Set("User-Agent", "gatehouse-health-check")
		res, err := client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
		res.Body.Close()
		if res.StatusCode < 200 || res.StatusCode >= 400 {
			return fmt.Errorf("health check %s answered %s", path, res.Status)
		}
		return nil
	}
}

// tcpProbe is the tcp/passthrough check: connect, then close.
func (rs *routeState) tcpProbe(ctx context.Context, up *upstream) error {
	c, err := rs.dialCheck(ctx, "tcp", up.Host)
	if err != nil {
		return err
	}
	return c.Close()
}

// dialCheck dials for a health check, sending a LOCAL PROXY header
// where the route speaks PROXY protocol.
func (rs *routeState) dialCheck(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := rs.dialer.DialContext(ctx, network, addr)
	if err != nil || rs.ppVersion == 0 {
		return c, err
	}
	b, err := localHeader(rs.ppVersion).Format()
	if err == nil {
		if dl, ok := ctx.Deadline(); ok {
			_ = c.SetWriteDeadline(dl)
		}
		_, err = c.Write(b)
		_ = c.SetWriteDeadline(time.Time{})
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
