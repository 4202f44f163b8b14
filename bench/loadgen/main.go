// Command loadgen is the benchmark's own TLS load generator, for what
// h2load cannot do:
//
//	handshake  full TLS handshakes (never resumed: checked on every
//	           connection), one small HTTP/1.1 request each, with a
//	           chosen key exchange and SNI spread over a list of names
//	sweep      one verified handshake per name of a list, in random
//	           order: proves every name is served, and measures the
//	           spread-SNI handshake rate
//	hostile    ClientHellos with unknown SNI at full rate: a prebuilt
//	           hello is written raw, so the client spends no crypto and
//	           the proxy is the bottleneck
//	flood      the same and handshakes that never finish, on raw
//	           syscalls and one epoll set: cheap enough per connection
//	           to saturate the proxy's core (flood.go)
//	latency    open-loop HTTP/1.1 requests at a fixed rate; latency is
//	           counted from each request's scheduled send time, so a
//	           stalled proxy cannot hide by slowing the client down
//	idle       open N TLS connections, one request each, then hold them
//	h3, h3hs, h3hostile: HTTP/3 requests, handshakes and refused
//	           Initials (h3.go)
//
// Every mode is bounded in time and prints one JSON object on stdout.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	addr     = flag.String("addr", "", "proxy address host:port")
	sni      = flag.String("sni", "", "SNI name (or comma-separated list)")
	namesArg = flag.String("names", "", "file with one SNI name per line (overrides -sni)")
	dur      = flag.Duration("d", 5*time.Second, "duration")
	conc     = flag.Int("c", 16, "concurrent connections/workers")
	curve    = flag.String("curve", "x25519", "handshake key exchange: x25519 or mlkem (X25519MLKEM768)")
	path     = flag.String("path", "/", "request path")
	rate     = flag.Int("rate", 1000, "latency: requests per second")
	n        = flag.Int("n", 1000, "idle: connections to hold")
	hold     = flag.Duration("hold", 60*time.Second, "idle: hold time at most (ends early when stdin closes)")
	caFile   = flag.String("ca", "", "sweep: CA certificate to verify against")
	kind     = flag.String("kind", "unknown", "flood: unknown, partial or stall (flood.go)")
	fThreads = flag.Int("threads", 1, "flood: OS threads, each with its own epoll set and -c/threads connections")
	fCPUs    = flag.String("cpus", "", "flood: pin thread i to the i-th CPU of this list (round robin; empty: no pinning)")
	fHold    = flag.Duration("flood-hold", 0, "flood partial/stall: reset each connection after this long (0: partial at once, stall when the proxy closes)")
)

func main() {
	flag.Parse()
	if flag.NArg() != 1 || *addr == "" {
		fmt.Fprintln(os.Stderr, "usage: loadgen [flags] handshake|sweep|hostile|flood|latency|idle|h3|h3hs|h3hostile")
		os.Exit(2)
	}
	var out any
	var err error
	switch flag.Arg(0) {
	case "handshake":
		out, err = runHandshake()
	case "sweep":
		out, err = runSweep()
	case "hostile":
		out, err = runHostile()
	case "flood":
		out, err = runFlood(*kind, *fHold)
	case "latency":
		out, err = runLatency()
	case "idle":
		out, err = runIdle()
	case "h3":
		out, err = runH3()
	case "h3hs":
		out, err = runH3Handshake()
	case "h3hostile":
		out, err = runH3Hostile()
	default:
		err = fmt.Errorf("unknown mode %q", flag.Arg(0))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}

func names() ([]string, error) {
	if *namesArg != "" {
		b, err := os.ReadFile(*namesArg)
		if err != nil {
			return nil, err
		}
		return strings.Fields(string(b)), nil
	}
	if *sni == "" {
		return nil, errors.New("-sni or -names is required")
	}
	return strings.Split(*sni, ","), nil
}

func curves() []tls.CurveID {
	if *curve == "mlkem" {
		return []tls.CurveID{tls.X25519MLKEM768}
	}
	return []tls.CurveID{tls.X25519}
}

func clientConfig(name string, roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		ServerName:         name,
		RootCAs:            roots,
		InsecureSkipVerify: roots == nil, // CertificateVerify is still checked
		CurvePreferences:   curves(),
		NextProtos:         []string{"http/1.1"},
		MinVersion:         tls.VersionTLS13,
		// no ClientSessionCache: every handshake is a full one
	}
}

var dialer = &net.Dialer{Timeout: 5 * time.Second}

// noTimeWait makes Close reset the connection (SO_LINGER 0) once the
// client has what it came for: thousands of short connections a second
// would otherwise leave tens of thousands of TIME_WAIT sockets on
// loopback, and new connections start colliding with them (SYNs
// answered late, runs stalling) — a property of the client, not of the
// proxy under test.
func noTimeWait(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
}

// oneConn does a full handshake and one request with Connection: close.
func oneConn(name string, roots *x509.CertPool, curveOut *tls.CurveID) (resumed bool, err error) {
	raw, err := dialer.Dial("tcp", *addr)
	if err != nil {
		return false, err
	}
	noTimeWait(raw)
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, clientConfig(name, roots))
	if err := c.Handshake(); err != nil {
		return false, err
	}
	st := c.ConnectionState()
	if curveOut != nil {
		*curveOut = st.CurveID
	}
	if _, err := io.WriteString(c, "GET "+*path+" HTTP/1.1\r\nHost: "+name+"\r\nConnection: close\r\n\r\n"); err != nil {
		return st.DidResume, err
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return st.DidResume, err
	}
	_, err = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if err == nil && res.StatusCode != 200 {
		err = fmt.Errorf("HTTP %d", res.StatusCode)
	}
	return st.DidResume, err
}

type hsResult struct {
	Conns   int64   `json:"conns"`
	Errors  int64   `json:"errors"`
	Resumed int64   `json:"resumed"`
	Seconds float64 `json:"seconds"`
	Rate    float64 `json:"rate"`
	Curve   string  `json:"curve"`
	Error   string  `json:"first_error,omitempty"`
}

func runHandshake() (any, error) {
	ns, err := names()
	if err != nil {
		return nil, err
	}
	var ok, bad, resumed atomic.Int64
	var firstErr atomic.Value
	var curveSeen atomic.Value
	deadline := time.Now().Add(*dur)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 7))
			var cv tls.CurveID
			for time.Now().Before(deadline) {
				name := ns[r.IntN(len(ns))]
				res, err := oneConn(name, nil, &cv)
				if res {
					resumed.Add(1)
				}
				if err != nil {
					bad.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					time.Sleep(time.Millisecond)
					continue
				}
				ok.Add(1)
				curveSeen.Store(cv.String())
			}
		}(uint64(w))
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	out := hsResult{Conns: ok.Load(), Errors: bad.Load(), Resumed: resumed.Load(), Seconds: el, Rate: float64(ok.Load()) / el}
	if v, _ := curveSeen.Load().(string); v != "" {
		out.Curve = v
	}
	if v, _ := firstErr.Load().(string); v != "" {
		out.Error = v
	}
	return out, nil
}

// runSweep handshakes once with every name, in random order, verifying
// the chain and the name against -ca: a wrong certificate counts as an
// error.
func runSweep() (any, error) {
	ns, err := names()
	if err != nil {
		return nil, err
	}
	var roots *x509.CertPool
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return nil, err
		}
		roots = x509.NewCertPool()
		roots.AppendCertsFromPEM(pem)
	}
	order := slices.Clone(ns)
	rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	var next, ok, bad atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(*dur)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				i := next.Add(1) - 1
				if i >= int64(len(order)) {
					return
				}
				if _, err := oneConn(order[i], roots, nil); err != nil {
					bad.Add(1)
					firstErr.CompareAndSwap(nil, order[i]+": "+err.Error())
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	out := hsResult{Conns: ok.Load(), Errors: bad.Load() + int64(len(order)) - ok.Load() - bad.Load(), Seconds: el, Rate: float64(ok.Load()) / el}
	if v, _ := firstErr.Load().(string); v != "" {
		out.Error = v
	}
	return out, nil
}

// captureConn records what a tls.Client writes and fails its reads,
// to capture a ClientHello without a server.
type captureConn struct {
	net.Conn
	buf bytes.Buffer
}

func (c *captureConn) Write(p []byte) (int, error) { return c.buf.Write(p) }
func (c *captureConn) Read([]byte) (int, error)    { return 0, io.EOF }
func (c *captureConn) Close() error                { return nil }
func (c *captureConn) SetDeadline(time.Time) error { return nil }
func (c *captureConn) SetReadDeadline(time.Time) error {
	return nil
}
func (c *captureConn) SetWriteDeadline(time.Time) error { return nil }

func buildHello(name string) []byte {
	cc := &captureConn{}
	_ = tls.Client(cc, &tls.Config{ServerName: name, CurvePreferences: curves(), NextProtos: []string{"h2", "http/1.1"}, InsecureSkipVerify: true}).Handshake()
	return cc.buf.Bytes()
}

type hostileResult struct {
	Conns   int64   `json:"conns"`  // hellos answered with an alert or a close
	Alerts  int64   `json:"alerts"` // of which answered with a TLS alert record
	Served  int64   `json:"served"` // answered with a ServerHello: must be 0
	Errors  int64   `json:"errors"` // dial failures
	Seconds float64 `json:"seconds"`
	Rate    float64 `json:"rate"`
}

// runHostile sends prebuilt ClientHellos for unknown names.
func runHostile() (any, error) {
	hellos := make([][]byte, 64)
	for i := range hellos {
		hellos[i] = buildHello(fmt.Sprintf("unknown-%d.invalid", i))
	}
	var conns, alerts, served, errs atomic.Int64
	deadline := time.Now().Add(*dur)
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := w; time.Now().Before(deadline); i++ {
				c, err := dialer.Dial("tcp", *addr)
				if err != nil {
					errs.Add(1)
					time.Sleep(time.Millisecond)
					continue
				}
				noTimeWait(c)
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, _ = c.Write(hellos[i%len(hellos)])
				n, _ := io.ReadAtLeast(c, buf, 1)
				switch {
				case n > 0 && buf[0] == 21: // alert record
					alerts.Add(1)
				case n > 0 && buf[0] == 22: // handshake record: a ServerHello
					served.Add(1)
				}
				conns.Add(1)
				c.Close()
			}
		}(w)
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	return hostileResult{Conns: conns.Load(), Alerts: alerts.Load(), Served: served.Load(), Errors: errs.Load(), Seconds: el, Rate: float64(conns.Load()) / el}, nil
}

type latencyResult struct {
	Requests int64   `json:"requests"`
	Errors   int64   `json:"errors"`
	Seconds  float64 `json:"seconds"`
	Rate     float64 `json:"rate"`
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
	P999us   float64 `json:"p999_us"`
	MaxUs    float64 `json:"max_us"`
	Late     int64   `json:"late_sends"` // sends that left >1 ms after their scheduled time
	// how late the client itself sent (its own noise floor: timer
	// wake-up, a busy CPU 1, no free connection)
	SendLateP50us float64 `json:"send_late_p50_us"`
	SendLateP99us float64 `json:"send_late_p99_us"`
	// from the request's write to its response's end: the latency
	// without the client's own send lateness (a starved client on a
	// shared CPU 1), for reading beside p99_us, never instead of it
	SvcP50us float64 `json:"svc_p50_us"`
	SvcP99us float64 `json:"svc_p99_us"`
}

// worker is one keep-alive HTTP/1.1 connection of the latency client.
type worker struct {
	c  *tls.Conn
	br *bufio.Reader
}

func (w *worker) connect(name string) error {
	raw, err := dialer.Dial("tcp", *addr)
	if err != nil {
		return err
	}
	c := tls.Client(raw, clientConfig(name, nil))
	if err := c.Handshake(); err != nil {
		raw.Close()
		return err
	}
	w.c, w.br = c, bufio.NewReader(c)
	return nil
}

func (w *worker) do(req []byte) error {
	if w.c == nil {
		return errors.New("not connected")
	}
	_ = w.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := w.c.Write(req); err != nil {
		return err
	}
	res, err := http.ReadResponse(w.br, nil)
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

// runLatency sends *rate requests per second, each at its scheduled
// time on the first free connection of a pool of *conc; the latency of
// a request runs from its scheduled time to the end of its response.
func runLatency() (any, error) {
	ns, err := names()
	if err != nil {
		return nil, err
	}
	name := ns[0]
	req := []byte("GET " + *path + " HTTP/1.1\r\nHost: " + name + "\r\n\r\n")
	total := int(float64(*rate) * dur.Seconds())
	interval := time.Second / time.Duration(*rate)
	free := make(chan *worker, *conc)
	for i := 0; i < *conc; i++ {
		w := &worker{}
		if err := w.connect(name); err != nil {
			return nil, fmt.Errorf("connecting: %w", err)
		}
		free <- w
	}
	lat := make([]time.Duration, total)
	sendLate := make([]time.Duration, total)
	svc := make([]time.Duration, total)
	var errs, late atomic.Int64
	var wg sync.WaitGroup
	// Go's timers wake up to ~1 ms late when the process is idle (the
	// netpoller waits in whole milliseconds): that would add its own
	// noise to every latency. The scheduling loop sleeps in nanosleep on
	// its own OS thread instead, with a second P for the readers.
	runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0)))
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := time.Now().Add(50 * time.Millisecond)
	for i := 0; i < total; i++ {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			ts := syscall.NsecToTimespec(int64(d))
			_ = syscall.Nanosleep(&ts, nil)
		}
		var w *worker
		select {
		case w = <-free:
		case <-time.After(10 * time.Second):
			return nil, errors.New("no free connection for 10 s")
		}
		sendLate[i] = time.Since(at)
		if sendLate[i] > time.Millisecond {
			late.Add(1)
		}
		wg.Add(1)
		go func(i int, at time.Time, w *worker) {
			defer wg.Done()
			sent := time.Now()
			if err := w.do(req); err != nil {
				errs.Add(1)
				if w.c != nil {
					w.c.Close()
				}
				w.c = nil
				_ = w.connect(name)
			}
			lat[i] = time.Since(at)
			svc[i] = time.Since(sent)
			free <- w
		}(i, at, w)
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	slices.Sort(lat)
	slices.Sort(sendLate)
	slices.Sort(svc)
	qq := func(v []time.Duration, p float64) float64 {
		if len(v) == 0 {
			return 0
		}
		return float64(v[int(p*float64(len(v)-1))].Nanoseconds()) / 1e3
	}
	q := func(p float64) float64 { return qq(lat, p) }
	for len(free) > 0 {
		if w := <-free; w.c != nil {
			w.c.Close()
		}
	}
	return latencyResult{Requests: int64(total), Errors: errs.Load(), Seconds: el, Rate: float64(total) / el,
		P50us: q(0.50), P99us: q(0.99), P999us: q(0.999), MaxUs: q(1), Late: late.Load(),
		SendLateP50us: qq(sendLate, 0.5), SendLateP99us: qq(sendLate, 0.99),
		SvcP50us: qq(svc, 0.5), SvcP99us: qq(svc, 0.99)}, nil
}

type idleResult struct {
	Open   int    `json:"open"`
	Errors int    `json:"errors"`
	Error  string `json:"first_error,omitempty"`
}

// runIdle opens *n keep-alive connections (handshake and one request
// each), prints "ready" on stderr, and holds them until stdin closes or
// *hold passes.
func runIdle() (any, error) {
	ns, err := names()
	if err != nil {
		return nil, err
	}
	name := ns[0]
	req := []byte("GET " + *path + " HTTP/1.1\r\nHost: " + name + "\r\n\r\n")
	ws := make([]*worker, *n)
	var errs atomic.Int64
	var firstErr atomic.Value
	var next atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < *conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(len(ws)) {
					return
				}
				w := &worker{}
				err := w.connect(name)
				if err == nil {
					err = w.do(req)
				}
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				_ = w.c.SetDeadline(time.Time{})
				ws[i] = w
			}
		}()
	}
	wg.Wait()
	open := 0
	for _, w := range ws {
		if w != nil {
			open++
		}
	}
	fmt.Fprintln(os.Stderr, "ready", open)
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(done) }()
	select {
	case <-done:
	case <-time.After(*hold):
	}
	for _, w := range ws {
		if w != nil {
			w.c.Close()
		}
	}
	out := idleResult{Open: open, Errors: int(errs.Load())}
	if v, _ := firstErr.Load().(string); v != "" {
		out.Error = v
	}
	return out, nil
}
