package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/gatehouse-proxy/gatehouse/proxy"
	"github.com/gatehouse-proxy/gatehouse/routes"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
)

// instance is one running gatehouse: the wiring of listeners, the
// certificate manager and the proxy. main runs one; tests run several.
type instance struct {
	log     *slog.Logger
	proxy   *proxy.Server
	certs   *tlsconfig.Manager
	admin   *http.Server
	adminLn net.Listener

	mu  sync.Mutex
	cfg *routes.Config

	served   chan error
	stopOnce sync.Once
	stopErr  error
}

// startOptions lets tests hand in listeners bound before the CA starts.
type startOptions struct {
	httpsLn, httpLn, adminLn net.Listener
	logger                   *slog.Logger
	ocspInterval             time.Duration
}

// start brings gatehouse up: listeners first (so certmagic finds the
// ports taken and the CA's validation reaches gatehouse), then the
// route table, then certificate management in the background. It
// returns as soon as the listeners serve; it never waits on a CA.
func start(cfg *routes.Config, o startOptions) (*instance, error) {
	log := o.logger
	if log == nil {
		log = newLogger(cfg.Log, nil)
	}
	in := &instance{log: log, cfg: cfg, served: make(chan error, 1)}
	in.proxy = proxy.New(proxy.Options{Logger: log})

	if o.httpsLn != nil {
		in.proxy.UseListeners(o.httpsLn, o.httpLn)
	} else if err := in.proxy.Listen(cfg.Listen.HTTPS, cfg.Listen.HTTP); err != nil {
		return nil, err
	}
	httpsAddr, httpAddr := in.proxy.Addrs()
	opts := tlsconfig.Options{Logger: log, OCSPCheckInterval: o.ocspInterval}
	opts.ListenHost, opts.TLSPort = hostPort(httpsAddr)
	if httpAddr != nil {
		_, opts.HTTPPort = hostPort(httpAddr)
	}
	certs, err := tlsconfig.New(cfg, opts)
	if err != nil {
		in.closeListeners()
		return nil, err
	}
	in.certs = certs
	in.proxy.SetCerts(certs)

	table := routes.NewTable(cfg)
	if err := in.proxy.SetTable(table); err != nil {
		in.closeListeners()
		certs.Close()
		return nil, err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, c := range append(proxy.Collectors(), tlsconfig.Collectors()...) {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
		}
	}
	in.adminLn = o.adminLn
	if in.adminLn == nil && cfg.Listen.Admin != "" {
		if in.adminLn, err = net.Listen("tcp", cfg.Listen.Admin); err != nil {
			in.closeListeners()
			certs.Close()
			return nil, fmt.Errorf("cannot listen on %s (admin): %v: choose another [listen] admin address, or \"\" to disable", cfg.Listen.Admin, err)
		}
	}
	if in.adminLn != nil {
		in.admin = &http.Server{Handler: proxy.AdminHandler(in.ready, reg), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = in.admin.Serve(in.adminLn) }()
	}

	// Manual certificates load here from files (no network); ACME names
	// are handed to background jobs. Connections arriving meanwhile wait
	// in the bound listeners' accept queues.
	if err := certs.Apply(table); err != nil {
		log.Error("certificate setup", "error", err)
	}
	go func() { in.served <- in.proxy.Serve() }()
	log.Info("gatehouse serving", "https", httpsAddr, "http", httpAddr, "admin", adminAddr(in.adminLn), "routes", len(cfg.Routes))
	return in, nil
}

func adminAddr(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

func hostPort(a net.Addr) (string, int) {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return "", 0
	}
	p, _ := strconv.Atoi(port)
	if host == "::" || host == "0.0.0.0" {
		host = ""
	}
	return host, p
}

func (in *instance) closeListeners() { in.proxy.CloseListeners() }

// ready is /readyz: listeners serve, and each configured name has a
// certificate or a recorded reason it does not (a failed order).
func (in *instance) ready() (bool, any) {
	ok := true
	var waiting []tlsconfig.NameStatus
	for _, st := range in.certs.Status() {
		if st.State != "ready" {
			waiting = append(waiting, st)
			if st.LastError == "" {
				ok = false // first order still in flight
			}
		}
	}
	return ok, map[string]any{"waiting": waiting}
}

// reload applies a new config: a bad one is refused and the old one
// keeps serving; connections already open keep their routes.
func (in *instance) reload(path string) error {
	cfg, err := loadConfig(path)
	if err != nil {
		in.log.Error("config reload refused; the previous config keeps serving", "config", path, "errors", err.Error())
		return err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if !reflect.DeepEqual(cfg.Listen, in.cfg.Listen) {
		in.log.Warn("[listen] changes take effect on restart; keeping the current listeners")
	}
	table := routes.NewTable(cfg)
	if err := in.proxy.SetTable(table); err != nil {
		in.log.Error("config reload refused; the previous config keeps serving", "error", err)
		return err
	}
	if err := in.certs.Apply(table); err != nil {
		in.log.Error("certificate setup after reload", "error", err)
	}
	in.cfg = cfg
	in.log.Info("config reloaded", "config", path, "routes", len(cfg.Routes))
	return nil
}

// shutdown stops accepting and drains for at most drain.
// It is safe to call more than once.
func (in *instance) shutdown(drain time.Duration) error {
	in.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		in.stopErr = in.proxy.Shutdown(ctx)
		if in.admin != nil {
			_ = in.admin.Shutdown(ctx)
		}
		in.certs.Close()
	})
	return in.stopErr
}
