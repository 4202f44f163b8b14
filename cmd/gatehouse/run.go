package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/caddyserver/certmagic"
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

	mu      sync.Mutex
	cfg     *routes.Config
	path    string // the config file the last reload (or start) read; the watcher follows it
	applied string // fingerprint of the files the last reload (or start) read

	started  time.Time
	served   chan error
	stop     chan struct{} // closed by shutdown: stops the config watcher
	stopOnce sync.Once
	stopErr  error
}

// startOptions lets tests hand in listeners bound before the CA starts.
type startOptions struct {
	httpsLn, httpLn, adminLn net.Listener
	logger                   *slog.Logger
	ocspInterval             time.Duration
	// storage replaces the certificate storage the config names.
	storage certmagic.Storage
	// watchEvery is how often the config file (and the cert/key files
	// it names) are checked for changes: 0 means every 2 s, < 0 never.
	watchEvery time.Duration
	// renewInterval is certmagic's renewal/ARI scan; tests shorten it.
	renewInterval time.Duration
	// dnsPropagation bounds the wait for a DNS-01 record to be visible;
	// tests shorten it.
	dnsPropagation time.Duration
	// healthInterval overrides [storage] health_interval (tests go below its 1 s minimum).
	healthInterval time.Duration
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
	in := &instance{log: log, cfg: cfg, started: time.Now(), served: make(chan error, 1), stop: make(chan struct{})}
	popts := proxy.Options{Logger: log}
	if cfg.Log.AccessEnabled() {
		popts.AccessLog = log.With("log", "access")
	}
	in.proxy = proxy.New(popts)

	if o.httpsLn != nil {
		in.proxy.UseListeners(o.httpsLn, o.httpLn)
	} else if err := in.proxy.Listen(cfg.Listen.HTTPS, cfg.Listen.HTTP); err != nil {
		return nil, err
	}
	httpsAddr, httpAddr := in.proxy.Addrs()
	opts := tlsconfig.Options{Logger: log, OCSPCheckInterval: o.ocspInterval, Storage: o.storage, RenewCheckInterval: o.renewInterval, HealthInterval: o.healthInterval}
	opts.DNSPropagationTimeout = o.dnsPropagation
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
		auth, err := routes.ParseAdminAuth(cfg.Listen.AdminAuth)
		if err != nil { // validated with the config; a quick start has none
			in.closeListeners()
			certs.Close()
			return nil, err
		}
		for _, w := range cfg.Warnings() {
			log.Warn(w)
		}
		in.admin = &http.Server{Handler: proxy.NewAdminHandler(proxy.AdminOptions{Ready: in.ready, Registry: reg, Status: in.status, Auth: auth}),
			ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = in.admin.Serve(in.adminLn) }()
	}

	// Manual certificates load here from files (no network); ACME names
	// are handed to background jobs. Connections arriving meanwhile wait
	// in the bound listeners' accept queues.
	if err := certs.Apply(table); err != nil {
		log.Error("certificate setup", "error", err)
	}
	go func() { in.served <- in.proxy.Serve() }()
	in.path, in.applied = cfg.Path, configSum(cfg.Path)+certStamps(cfg)
	if cfg.Path != "" && o.watchEvery >= 0 {
		every := o.watchEvery
		if every == 0 {
			every = 2 * time.Second
		}
		go in.watch(every)
	}
	httpShown := "disabled"
	if httpAddr != nil {
		httpShown = httpAddr.String()
	}
	log.Info("gatehouse serving", "https", httpsAddr, "http", httpShown, "admin", adminAddr(in.adminLn), "routes", len(cfg.Routes))
	return in, nil
}

func adminAddr(l net.Listener) string {
	if l == nil {
		return "disabled"
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
// certificate or a recorded reason it does not (a failed order). The
// storage's state is reported but does not make the instance unready: it
// serves from memory while the store is down, and failing every replica's
// readiness at once would turn a store outage into a traffic outage
// (gatehouse_storage_up is the metric to alert on).
func (in *instance) ready() (bool, any) {
	total, nWaiting, inFlight, waiting := in.certs.Readiness(50)
	ok := inFlight == 0 // a first order still in flight has no reason to show yet
	details := map[string]any{"names": total, "waiting_count": nWaiting, "waiting": waiting,
		"storage": in.certs.StorageHealth(),
		// certificates in storage not read yet: served on first
		// handshake, checked by a background walk (tlsconfig/lazy.go)
		"stored_unchecked": in.certs.StoredUnchecked()}
	// ready (a valid certificate serves), but renewals fail: say why
	if n, failing := in.certs.Failing(50); n > 0 {
		details["renewal_failing_count"], details["renewal_failing"] = n, failing
	}
	if p := in.certs.ECHPublishState(); p != nil {
		details["ech_dns"] = p // ECH's HTTPS records, published through [acme.dns]
	}
	// still ready (certificates serve from memory), but say so
	if err, since := in.certs.StorageWriteError(); err != nil {
		details["storage_write_error"] = err.Error()
		details["storage_write_failing_since"] = since
	}
	return ok, details
}

// status is the status page's data (proxy/admin_statuspage.go): the routes in
// force, and the certificates as `gatehouse certs` and /readyz see them.
func (in *instance) status(ctx context.Context) proxy.StatusData {
	ready, _ := in.ready()
	return proxy.StatusData{Version: versionString(), Started: in.started, Ready: ready,
		Routes: in.proxy.Routes(), Overview: in.certs.Overview(ctx, proxy.StatusLimit)}
}

// reload applies a new config: a bad one is refused and the old one
// keeps serving; connections already open keep their routes.
func (in *instance) reload(path string) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	// read under the lock: a SIGHUP and the watcher reloading together
	// must not apply an older read of the file last
	in.path = path
	sum := configSum(path)
	cfg, err := loadConfig(path)
	if err != nil {
		in.applied = sum + certStamps(in.cfg) // report a bad file once, not at every poll
		in.log.Error("config reload refused; the previous config keeps serving", "config", path, "errors", err.Error())
		return err
	}
	// proxy_protocol_from is a policy, applied from the new config at once
	oldL, newL := in.cfg.Listen, cfg.Listen
	oldL.ProxyProtocolFrom, newL.ProxyProtocolFrom = nil, nil
	if !reflect.DeepEqual(newL, oldL) {
		in.log.Warn("[listen] changes take effect on restart; keeping the current listeners")
	}
	if !reflect.DeepEqual(cfg.Storage, in.cfg.Storage) {
		in.log.Warn("[storage] changes take effect on restart; keeping the current storage")
	}
	table := routes.NewTable(cfg)
	if err := in.proxy.SetTable(table); err != nil {
		in.applied = sum + certStamps(in.cfg)
		in.log.Error("config reload refused; the previous config keeps serving", "config", path, "error", err)
		return err
	}
	stamps := certStamps(cfg) // before Apply reads the files
	if err := in.certs.Apply(table); err != nil {
		in.log.Error("certificate setup after reload", "error", err)
	}
	in.cfg = cfg
	in.applied = sum + stamps
	in.log.Info("config reloaded", "config", path, "routes", len(cfg.Routes))
	return nil
}

// watch reloads when the config file, or a cert/key file the config
// names, changes. It polls (the config's content, the certificate
// files' size, mtime and inode): that works on every file system, for
// editors that replace the file, and for symlink swaps such as
// Kubernetes secret volumes, without a dependency. A change is applied
// once it has held still for a moment, so a file caught half-written
// is not loaded; a bad config is reported once, not at every poll.
func (in *instance) watch(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var path string
	current := func() string {
		in.mu.Lock()
		cfg, applied := in.cfg, in.applied
		path = in.path
		in.mu.Unlock()
		fp := configSum(path) + certStamps(cfg)
		if fp == applied {
			return ""
		}
		return fp
	}
	for {
		select {
		case <-in.stop:
			return
		case <-t.C:
		}
		fp := current()
		if fp == "" {
			continue
		}
		select {
		case <-in.stop:
			return
		case <-time.After(min(every/2, 500*time.Millisecond)):
		}
		if current() != fp {
			continue // still being written, or a SIGHUP reloaded it
		}
		in.log.Info("config or certificate file changed; reloading", "config", path)
		_ = in.reload(path)
	}
}

// configSum hashes a config file's content.
func configSum(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "unreadable: " + err.Error()
	}
	sum := sha256.Sum256(data)
	return string(sum[:])
}

// certStamps identifies the versions of the cert/key files cfg names
// by size, mtime and inode, without reading them.
func certStamps(cfg *routes.Config) string {
	var b strings.Builder
	for _, r := range cfg.Routes {
		if !r.Manual() {
			continue
		}
		for _, f := range []string{r.Cert, r.Key} {
			st, err := os.Stat(f)
			if err != nil {
				fmt.Fprintf(&b, "%s: %v\n", f, err)
				continue
			}
			var ino uint64
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				ino = sys.Ino
			}
			fmt.Fprintf(&b, "%s %d %d %d\n", f, st.Size(), st.ModTime().UnixNano(), ino)
		}
	}
	return b.String()
}

// drainTimeout is [timeouts] shutdown_drain of the config in force.
func (in *instance) drainTimeout() time.Duration {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.cfg.Timeouts.ShutdownDrainTimeout()
}

// shutdown stops accepting and drains for at most drain.
// It is safe to call more than once.
func (in *instance) shutdown(drain time.Duration) error {
	in.stopOnce.Do(func() {
		close(in.stop)
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
