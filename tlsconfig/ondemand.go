package tlsconfig

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// On-demand TLS: a route with hosts = ["*"] or "*.suffix" takes names
// nobody listed, and gets each one's certificate during its first
// handshake. A stranger's ClientHello must not be able to spend the
// CA's rate limits, so before anything reaches the CA:
//   - [on_demand] ask must answer 2xx for ?domain=NAME&ip=CLIENT, within
//     ask_timeout (a hang is a no);
//   - a "no" is remembered for deny_cache and answered without asking;
//   - new orders are limited to rate (N per period) and max_concurrent
//     at once, for the whole process;
//   - a name whose order failed is not ordered again before a backoff.
//
// The handshake that triggers an order waits for it, at most the
// handshake timeout; the order carries on in the background and the
// next handshake gets the certificate.

// onDemandObtainTimeout bounds one on-demand order in the background
// (certmagic's own bound on an on-demand obtain is 180 s).
const onDemandObtainTimeout = 3 * time.Minute

// onDemandAllowTTL is how long an allowed answer is reused: long enough
// that certmagic's own check (DecisionFunc) during the same order does
// not ask again, short enough that a revoked permission takes effect soon.
const onDemandAllowTTL = time.Minute

// Failure backoff for one name: 1m, 2m, 4m ... 1h.
const (
	onDemandBackoffMin = time.Minute
	onDemandBackoffMax = time.Hour
)

// maxDecisionCache bounds the remembered answers: random names in SNI
// must not grow memory without limit.
const maxDecisionCache = 100_000

var (
	errDenied      = errors.New("on-demand: ask endpoint denied the name")
	errRateLimited = errors.New("on-demand: order rate limit reached ([on_demand] rate)")
)

var (
	metricAsk = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_on_demand_ask_total",
		Help: "On-demand ask calls by decision: allowed (2xx), denied (other status), error (no answer in time, connection failed).",
	}, []string{"decision"})
	metricOnDemandRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_on_demand_refused_total",
		Help: "On-demand handshakes refused without asking or without ordering, by reason: denied_cached, backoff, rate_limited.",
	}, []string{"reason"})
	metricOnDemandInFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "gatehouse_on_demand_orders_in_flight",
		Help: "On-demand certificate loads and orders running now (capped by [on_demand] max_concurrent).",
	})
)

// onDemand holds the on-demand state of a Manager.
type onDemand struct {
	client *http.Client

	mu         sync.Mutex
	ask        string
	askTimeout time.Duration
	denyTTL    time.Duration
	rate       *windowLimiter
	slots      chan struct{}
	denied     map[string]time.Time // name -> refused until
	allowed    map[string]time.Time // name -> allowed until
	failures   map[string]*odFailure
	inflight   map[string]*odCall
	configs    map[string]*certmagic.Config // "acme/<profile>" or "internal"
	table      *routes.Table
	// handshake is how long a handshake waits on an order.
	handshake time.Duration
}

type odFailure struct {
	n     int
	until time.Time
	err   error
}

type odCall struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

func newOnDemand() *onDemand {
	return &onDemand{
		client: &http.Client{
			// never follow a redirect: only the ask URL's own 2xx allows
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Transport: &http.Transport{
				Proxy:               http.ProxyFromEnvironment,
				MaxIdleConnsPerHost: 16,
				IdleConnTimeout:     time.Minute,
			},
		},
		denied:   map[string]time.Time{},
		allowed:  map[string]time.Time{},
		failures: map[string]*odFailure{},
		inflight: map[string]*odCall{},
		configs:  map[string]*certmagic.Config{},
	}
}

// configure applies [on_demand] and the route table; called on every Apply.
func (od *onDemand) configure(cfg *routes.Config, t *routes.Table) {
	n, per, err := cfg.OnDemand.ParseRate()
	if err != nil { // validated already; keep the default
		n, per = 10, time.Minute
	}
	conc := cfg.OnDemand.MaxConcurrent
	if conc == 0 {
		conc = routes.DefaultOnDemandMaxConcurrent
	}
	od.mu.Lock()
	defer od.mu.Unlock()
	if od.ask != cfg.OnDemand.Ask {
		// answers from another endpoint do not hold
		clear(od.denied)
		clear(od.allowed)
	}
	od.ask = cfg.OnDemand.Ask
	od.askTimeout = cfg.OnDemand.AskTimeout.Or(routes.DefaultOnDemandAskTimeout)
	od.denyTTL = cfg.OnDemand.DenyCache.Or(routes.DefaultOnDemandDenyCache)
	od.handshake = cfg.Timeouts.HandshakeTimeout()
	if od.rate == nil {
		od.rate = newWindowLimiter(n, per)
	} else {
		od.rate.set(n, per)
	}
	if od.slots == nil || cap(od.slots) != conc {
		od.slots = make(chan struct{}, conc) // holders release into the channel they took
	}
	od.table = t
}

// prepareOnDemand makes sure the on-demand certmagic config a pattern
// route needs exists. Called with m.mu held.
func (m *Manager) prepareOnDemand(cfg *routes.Config, e *routes.Entry) {
	key := onDemandKey(e)
	if key == "" || m.onDemand.configs[key] != nil {
		return
	}
	var base *certmagic.Config
	switch e.Issuer {
	case "internal":
		base = m.internalConfig()
	case "acme":
		c, err := m.acmeConfig(cfg, e.Route.Profile, false)
		if err != nil {
			m.log.Error("on-demand: no ACME config", "route", e.Index+1, "error", err)
			return
		}
		base = c
	default:
		return
	}
	// A copy of the route's config, sharing its issuers (their accounts
	// and challenge solvers), with on-demand switched on.
	c := certmagic.New(m.cache, *base)
	od := m.onDemand
	c.OnDemand = &certmagic.OnDemandConfig{
		DecisionFunc: func(ctx context.Context, name string) error {
			return od.decide(ctx, name, clientIPFromContext(ctx))
		},
	}
	next := base.OnEvent // ACME: order pacing and self-check (attempts.go)
	c.OnEvent = func(ctx context.Context, event string, data map[string]any) error {
		if event == "cert_obtaining" {
			if renewal, _ := data["renewal"].(bool); !renewal && !od.rate.take(time.Now()) {
				metricOnDemandRefused.WithLabelValues("rate_limited").Inc()
				// no retry inside this order: the next handshake asks again
				return certmagic.ErrNoRetry{Err: errRateLimited}
			}
		}
		return next(ctx, event, data)
	}
	od.configs[key] = c
}

func onDemandKey(e *routes.Entry) string {
	switch e.Issuer {
	case "internal":
		return "internal"
	case "acme":
		return "acme/" + e.Route.Profile
	}
	return ""
}

// applyPatterns registers the on-demand configs of every pattern route
// in t. Called by Apply with m.mu held.
func (m *Manager) applyPatterns(cfg *routes.Config, t *routes.Table) {
	m.onDemand.mu.Lock()
	reload := m.onDemand.table != nil
	m.onDemand.mu.Unlock()
	if reload {
		m.loadStored()
	}
	m.onDemand.configure(cfg, t)
	for _, e := range t.Entries() {
		if e.Issuer != "acme" {
			continue // internal routes are prepared by applyInternal
		}
		for _, h := range e.Hosts {
			if isPattern(h) && !wildcardByDNS(cfg, h) {
				m.prepareOnDemand(cfg, e)
				break
			}
		}
	}
}

// serverName is the name a handshake asks for: its SNI, or the local IP
// address it arrived on when it sent none (clients send no SNI for an
// IP address, so an IP route is chosen by the address dialed).
func serverName(hello *tls.ClientHelloInfo) string {
	if hello.ServerName != "" || hello.Conn == nil {
		return hello.ServerName
	}
	return localIP(hello.Conn.LocalAddr())
}

func localIP(a net.Addr) string {
	if a == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		host = a.String()
	}
	if i := strings.IndexByte(host, '%'); i >= 0 {
		host = host[:i]
	}
	return host
}

func clientIP(hello *tls.ClientHelloInfo) string {
	if hello == nil || hello.Conn == nil {
		return ""
	}
	return localIP(hello.Conn.RemoteAddr())
}

func clientIPFromContext(ctx context.Context) string {
	hello, _ := ctx.Value(certmagic.ClientHelloInfoCtxKey).(*tls.ClientHelloInfo)
	return clientIP(hello)
}

// patternCertificate serves a name the route table matched by a pattern
// ("*.suffix" or "*") rather than by name.
func (m *Manager) patternCertificate(e *routes.Entry, name string, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	m.mu.RLock()
	var c *certmagic.Config
	switch e.Issuer {
	case "manual":
		c = m.manual
	case "internal":
		// a "*.suffix" route has one wildcard certificate
		if dot := strings.IndexByte(name, '.'); dot > 0 {
			c = m.byName["*"+name[dot:]]
		}
		if c == nil {
			c = m.onDemand.configs["internal"]
		}
	case "acme":
		// with DNS-01, a "*.suffix" route has one wildcard certificate
		if dot := strings.IndexByte(name, '.'); dot > 0 {
			if wild := "*" + name[dot:]; m.byName[wild] != nil {
				c = m.byName[wild]
				m.mu.RUnlock()
				return m.storedCertificate(c, wild, hello)
			}
		}
		c = m.onDemand.configs[onDemandKey(e)]
	}
	m.mu.RUnlock()
	if c == nil {
		return nil, fmt.Errorf("no certificate configured for %q", name)
	}
	if c.OnDemand == nil || isChallenge(hello) {
		// certmagic answers TLS-ALPN-01 challenges itself; the CA's
		// validation must never wait on the ask endpoint
		return c.GetCertificate(hello)
	}
	return m.onDemandCertificate(c, name, hello)
}

func isChallenge(hello *tls.ClientHelloInfo) bool {
	return len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == "acme-tls/1"
}

// onDemandCertificate serves a certificate from c, an on-demand config:
// from the cache when it is there, else (once allowed) from storage or a
// new order, waiting at most the handshake timeout.
func (m *Manager) onDemandCertificate(c *certmagic.Config, name string, hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if len(m.cache.AllMatchingCertificates(name)) > 0 {
		// certmagic renews on-demand certificates during handshakes
		return c.GetCertificate(hello)
	}
	od := m.onDemand
	if err := od.decide(hello.Context(), name, clientIP(hello)); err != nil {
		m.log.Debug("on-demand: refusing name", "name", name, "client", clientIP(hello), "reason", err)
		return nil, nil // unrecognized_name: this name is not served here
	}
	if err := od.backoff(name, time.Now()); err != nil {
		metricOnDemandRefused.WithLabelValues("backoff").Inc()
		return nil, err
	}

	od.mu.Lock()
	call, running := od.inflight[name]
	if !running {
		call = &odCall{done: make(chan struct{})}
		od.inflight[name] = call
	}
	slots, wait := od.slots, od.handshake
	od.mu.Unlock()
	if !running {
		go m.runOnDemand(c, name, hello, call, slots)
	}

	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-call.done:
		return call.cert, call.err
	case <-t.C:
		return nil, fmt.Errorf("on-demand: certificate for %s not ready within the handshake timeout (%s); the order continues, retry shortly", name, wait)
	}
}

// runOnDemand loads or orders name's certificate in the background,
// holding one of the max_concurrent slots.
func (m *Manager) runOnDemand(c *certmagic.Config, name string, hello *tls.ClientHelloInfo, call *odCall, slots chan struct{}) {
	od := m.onDemand
	ctx, cancel := context.WithTimeout(m.ctx, onDemandObtainTimeout)
	defer cancel()
	var cert *tls.Certificate
	var err error
	select {
	case slots <- struct{}{}:
		metricOnDemandInFlight.Inc()
		cert, err = c.GetCertificateWithContext(ctx, hello)
		metricOnDemandInFlight.Dec()
		<-slots
	case <-ctx.Done():
		err = fmt.Errorf("on-demand: no free order slot for %s within %s ([on_demand] max_concurrent)", name, onDemandObtainTimeout)
	}
	if err == nil && (cert == nil || cert.Leaf == nil) {
		err = fmt.Errorf("on-demand: no certificate for %s", name)
	}
	od.mu.Lock()
	if err != nil {
		cert = nil
		f := od.failures[name]
		if f == nil {
			f = &odFailure{}
			od.failures[name] = f
		}
		f.n++
		f.err = err
		f.until = time.Now().Add(min(onDemandBackoffMin<<min(f.n-1, 10), onDemandBackoffMax))
		prune(od.failures, func(f *odFailure) bool { return time.Now().After(f.until) })
	} else {
		delete(od.failures, name)
	}
	call.cert, call.err = cert, err
	delete(od.inflight, name)
	od.mu.Unlock()
	close(call.done)
	if err != nil {
		m.log.Error("on-demand: no certificate; the name is refused until the backoff passes",
			"name", name, "error", err)
	}
}

// backoff refuses a name whose last order failed recently.
func (od *onDemand) backoff(name string, now time.Time) error {
	od.mu.Lock()
	defer od.mu.Unlock()
	if f := od.failures[name]; f != nil && now.Before(f.until) {
		return fmt.Errorf("on-demand: the last order for %s failed (%v); next attempt after %s", name, f.err, f.until.Format(time.RFC3339))
	}
	return nil
}

// decide answers whether name may get a certificate: from a remembered
// answer, or by asking the ask endpoint.
func (od *onDemand) decide(ctx context.Context, name, ip string) error {
	now := time.Now()
	od.mu.Lock()
	if until, ok := od.denied[name]; ok && now.Before(until) {
		od.mu.Unlock()
		metricOnDemandRefused.WithLabelValues("denied_cached").Inc()
		return fmt.Errorf("%w (remembered until %s)", errDenied, until.Format(time.TimeOnly))
	}
	if until, ok := od.allowed[name]; ok && now.Before(until) {
		od.mu.Unlock()
		return nil
	}
	ask, timeout := od.ask, od.askTimeout
	od.mu.Unlock()
	if ask == "" {
		return nil // only internal routes run without ask (validation)
	}

	err := od.askEndpoint(ctx, ask, name, ip, timeout)
	now = time.Now()
	od.mu.Lock()
	defer od.mu.Unlock()
	if err != nil {
		od.denied[name] = now.Add(od.denyTTL)
		prune(od.denied, func(t time.Time) bool { return now.After(t) })
		return err
	}
	od.allowed[name] = now.Add(onDemandAllowTTL)
	prune(od.allowed, func(t time.Time) bool { return now.After(t) })
	return nil
}

// askEndpoint calls GET ask?domain=NAME&ip=IP; nil means 2xx.
func (od *onDemand) askEndpoint(ctx context.Context, ask, name, ip string, timeout time.Duration) error {
	u, err := url.Parse(ask)
	if err != nil {
		metricAsk.WithLabelValues("error").Inc()
		return fmt.Errorf("on-demand: ask URL: %w", err)
	}
	q := u.Query()
	q.Set("domain", name)
	if ip != "" {
		q.Set("ip", ip)
	}
	u.RawQuery = q.Encode()
	// the handshake's context ends with the connection; the ask does too
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		metricAsk.WithLabelValues("error").Inc()
		return err
	}
	req.Header.Set("User-Agent", "gatehouse on-demand ask")
	res, err := od.client.Do(req)
	if err != nil {
		metricAsk.WithLabelValues("error").Inc()
		return fmt.Errorf("%w: no answer from %s within %s: %v", errDenied, u.Host, timeout, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 64<<10))
	res.Body.Close()
	if res.StatusCode < 200 || res.StatusCode > 299 {
		metricAsk.WithLabelValues("denied").Inc()
		return fmt.Errorf("%w: %s answered HTTP %d for %s", errDenied, u.Host, res.StatusCode, name)
	}
	metricAsk.WithLabelValues("allowed").Inc()
	return nil
}

// prune drops expired entries once a map reaches maxDecisionCache, and
// everything if more than half are still live (a flood of random
// names): a sweep happens at most once per maxDecisionCache/2 inserts.
func prune[V any](m map[string]V, expired func(V) bool) {
	if len(m) < maxDecisionCache {
		return
	}
	for k, v := range m {
		if expired(v) {
			delete(m, k)
		}
	}
	if len(m) > maxDecisionCache/2 {
		clear(m)
	}
}

// windowLimiter allows at most n events in any period: a sliding window
// of the last n event times.
type windowLimiter struct {
	mu     sync.Mutex
	n      int
	period time.Duration
	times  []time.Time // ring of the last n events
	next   int
}

func newWindowLimiter(n int, period time.Duration) *windowLimiter {
	return &windowLimiter{n: n, period: period, times: make([]time.Time, n)}
}

func (l *windowLimiter) set(n int, period time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n != l.n {
		l.times, l.next = make([]time.Time, n), 0
	}
	l.n, l.period = n, period
}

// take records an event at now if fewer than n happened in the last period.
func (l *windowLimiter) take(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	oldest := l.times[l.next] // the n-th most recent event
	if !oldest.IsZero() && now.Sub(oldest) < l.period {
		return false
	}
	l.times[l.next] = now
	l.next = (l.next + 1) % l.n
	return true
}

// patternConfigFor returns the on-demand config whose pattern route
// serves one of names, for certmagic's maintenance of certificates it
// obtained on demand. Called with m.mu held.
func (m *Manager) patternConfigFor(names []string) *certmagic.Config {
	od := m.onDemand
	od.mu.Lock()
	t := od.table
	od.mu.Unlock()
	if t == nil {
		return nil
	}
	for _, n := range names {
		if e := t.Lookup(n); e != nil {
			if c := od.configs[onDemandKey(e)]; c != nil {
				return c
			}
		}
	}
	return nil
}

// certopsCollectors are the metrics of on-demand TLS and the
// certificate inventory, appended to Collectors.
var certopsCollectors = []prometheus.Collector{metricAsk, metricOnDemandRefused, metricOnDemandInFlight}
