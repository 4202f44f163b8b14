// Command gatehouse is a TLS reverse proxy that routes by SNI and gets
// its certificates by ACME. This file only parses the command line and
// wires the routes, tlsconfig and proxy packages together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `gatehouse: a TLS reverse proxy that routes by SNI and gets its own certificates.

Usage:
  gatehouse run [--config FILE]       serve (FILE: $GATEHOUSE_CONFIG, then ./gatehouse.toml)
  gatehouse run --from NAME --to URL [--from NAME --to URL ...] [--https :443] [--http :80] [--admin 127.0.0.1:2019] [--email E]
                                      quick start without a file
  gatehouse validate [--config FILE]  check a config; every error with its line; exit 1 on errors
  gatehouse healthcheck [--url URL]   exit 0 when the admin /healthz answers (for container HEALTHCHECK)
  gatehouse certs [--config FILE] [--json] [--root]
                                      every name's certificate, renewal, staple, last error (reads storage only)
  gatehouse dns-record NAME [--config FILE] [--json]
                                      the dns-persist-01 TXT record binding NAME to gatehouse's ACME account
  gatehouse import autocert|caddy DIR [--config FILE] [--dry-run]
                                      move certificates in from autocert or Caddy without re-issuing
  gatehouse storage copy --from STORE --to STORE
                                      copy certificates between stores (dir:PATH, etcd://HOST:PORT/PREFIX/, config:FILE)
  gatehouse ech [--config FILE] [--json]
                                      the Encrypted Client Hello config and the DNS HTTPS records to publish
  gatehouse version                   print the version
`

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "healthcheck":
		return cmdHealthcheck(args[1:], stderr)
	case "certs":
		return cmdCerts(args[1:], stdout, stderr)
	case "dns-record":
		return cmdDNSRecord(args[1:], stdout, stderr)
	case "import":
		return cmdImport(args[1:], stdout, stderr)
	case "storage":
		return cmdStorage(args[1:], stdout, stderr)
	case "ech":
		return cmdECH(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "gatehouse", versionString())
		return 0
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "gatehouse: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func versionString() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		v += " (" + bi.GoVersion + ")"
	}
	return v
}

// configPath resolves --config, then $GATEHOUSE_CONFIG, then ./gatehouse.toml.
func configPath(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if p := os.Getenv("GATEHOUSE_CONFIG"); p != "" {
		return p
	}
	return "gatehouse.toml"
}

// loadConfig reads a config file and applies environment overrides.
func loadConfig(path string) (*routes.Config, error) {
	cfg, err := routes.Load(path)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFlag := fs.String("config", "", "config file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	path := configPath(*cfgFlag)
	cfg, err := loadConfig(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		var es routes.Errors
		if errors.As(err, &es) && len(es) > 1 {
			fmt.Fprintf(stderr, "%d errors\n", len(es))
		}
		return 1
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintln(stderr, "warning:", w)
	}
	fmt.Fprintf(stdout, "%s: ok (%d routes)\n", path, len(cfg.Routes))
	return 0
}

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func cmdRun(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFlag := fs.String("config", "", "config file")
	var from, to multiFlag
	fs.Var(&from, "from", "quick start: a host name to serve (repeatable, paired with --to)")
	fs.Var(&to, "to", "quick start: the upstream for the preceding --from, e.g. http://127.0.0.1:8080")
	httpsAddr := fs.String("https", ":443", "quick start: https listen address")
	httpAddr := fs.String("http", ":80", "quick start: http listen address (\"\" disables)")
	adminAddr := fs.String("admin", "127.0.0.1:2019", "quick start: admin listen address (\"\" disables)")
	email := fs.String("email", os.Getenv(routes.EnvACMEEmail), "quick start: ACME account email")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var cfg *routes.Config
	var err error
	path := ""
	if len(from) > 0 || len(to) > 0 {
		cfg, err = routes.Quick(routes.QuickOptions{From: from, To: to, HTTPS: *httpsAddr, HTTP: *httpAddr, Admin: *adminAddr, Email: *email})
	} else {
		path = configPath(*cfgFlag)
		cfg, err = loadConfig(path)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	log := newLogger(cfg.Log, stderr)
	slog.SetDefault(log)
	in, err := start(cfg, startOptions{logger: log})
	if err != nil {
		fmt.Fprintln(stderr, "gatehouse:", err)
		return 1
	}
	trimCtx, stopTrim := context.WithCancel(context.Background())
	defer stopTrim()
	go newMemTrimmer().run(trimCtx)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	for {
		select {
		case err := <-in.served:
			log.Error("listener stopped", "error", err)
			return 1
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				if path == "" {
					log.Warn("SIGHUP ignored: a quick start has no config file to reload")
					continue
				}
				log.Info("SIGHUP: reloading the config", "config", path)
				_ = in.reload(path)
				continue
			}
			drain := in.drainTimeout()
			log.Info("shutting down: draining connections", "signal", sig.String(), "max_drain", drain)
			done := make(chan error, 1)
			go func() { done <- in.shutdown(drain) }()
			for {
				select {
				case err := <-done:
					if err != nil {
						log.Warn("shutdown", "error", err)
					}
					return 0
				case sig := <-sigs:
					if sig != syscall.SIGHUP {
						log.Warn("second signal: exiting without waiting for the drain", "signal", sig.String())
						return 1
					}
				}
			}
		}
	}
}

func cmdHealthcheck(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "", "health URL (default: http://<[listen] admin>/healthz)")
	cfgFlag := fs.String("config", "", "config file, to find the admin address")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	target := *url
	if target == "" {
		addr := "127.0.0.1:2019"
		if cfg, err := routes.Load(configPath(*cfgFlag)); err == nil && cfg.Listen.Admin != "" {
			addr = cfg.Listen.Admin
		}
		target = "http://" + addr + "/healthz"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "unhealthy:", err)
		return 1
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		fmt.Fprintln(stderr, "unhealthy: HTTP", res.StatusCode)
		return 1
	}
	return 0
}

// newLogger builds the process logger from [log].
func newLogger(c routes.Log, w io.Writer) *slog.Logger {
	if w == nil {
		w = os.Stderr
	}
	level := slog.LevelInfo
	switch c.Level {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
