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
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
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
  gatehouse help [COMMAND]            this list, or what COMMAND does and its flags

Run 'gatehouse help COMMAND' (or 'gatehouse COMMAND --help') for details.
`

// commandHelp is what 'gatehouse help CMD' and 'gatehouse CMD --help'
// print to stdout, above the command's flags (exit 0).
var commandHelp = map[string]string{
	"run": `usage: gatehouse run [--config FILE]
       gatehouse run --from NAME --to URL [--from NAME --to URL ...] [--https ADDR] [--http ADDR] [--admin ADDR] [--email E]

Serves the routes of a config file until SIGINT/SIGTERM (SIGHUP reloads it).
FILE is --config, else $GATEHOUSE_CONFIG, else ./gatehouse.toml.

With --from/--to no file is needed (quick start): each NAME is served from the
URL after it. Names a public CA cannot sign (localhost, *.internal, IP addresses)
get certificates from gatehouse's internal CA, the rest from Let's Encrypt.
Certificates are kept in /var/lib/gatehouse when it is writable (root), else in
~/.local/share/gatehouse ($GATEHOUSE_STORAGE_DIR overrides); 'gatehouse certs'
reads them there.
`,
	"validate": `usage: gatehouse validate [--config FILE]

Checks a config file without starting anything: every error with its file:line,
exit 1 on errors, 0 when the file is good.
FILE is --config, else $GATEHOUSE_CONFIG, else ./gatehouse.toml.
`,
	"healthcheck": `usage: gatehouse healthcheck [--url URL] [--config FILE]

Exits 0 when the admin listener's /healthz answers 200, else 1 (for a
container HEALTHCHECK). URL defaults to http://<[listen] admin>/healthz.
`,
	"certs": `usage: gatehouse certs [--config FILE | --storage DIR] [--json] [--root]

Lists every name's certificate: issuer, expiry, renewal time, OCSP staple, last
error and next retry. It only reads storage, so it works beside a running
gatehouse. Storage is the config's [storage]; with no config file (a quick
start), or with --storage DIR, the certificate folder is read directly
(default: /var/lib/gatehouse for root, else ~/.local/share/gatehouse).
`,
	"ech": `usage: gatehouse ech [--config FILE] [--json]

Prints the Encrypted Client Hello config and the DNS HTTPS records to publish
so that clients use it. The keys live in storage, shared by replicas; when
there are none yet they are made, so the record can be published before the
first run.
`,
	"import":  importUsage,
	"storage": storageUsage,
	"version": "usage: gatehouse version\n\nPrints the version and the Go version it was built with.\n",
}

// parseFlags parses a command's flags. --help prints the command's help
// to stdout (ok false, code 0); a bad flag prints the error and a
// pointer to the help (code 2).
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	fs.SetOutput(stderr)
	fs.Usage = func() {}
	err := fs.Parse(args)
	if err == nil {
		return 0, true
	}
	name, _, _ := strings.Cut(fs.Name(), " ")
	if errors.Is(err, flag.ErrHelp) {
		printHelp(stdout, name, fs)
		return 0, false
	}
	fmt.Fprintf(stderr, "see 'gatehouse help %s'\n", name)
	return 2, false
}

func printHelp(w io.Writer, name string, fs *flag.FlagSet) {
	fmt.Fprint(w, commandHelp[name])
	if fs == nil {
		return
	}
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprintln(w, "\nflags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool {
	return arg == "-h" || arg == "--help" || arg == "-help" || arg == "help"
}

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
		return cmdRun(args[1:], stdout, stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "healthcheck":
		return cmdHealthcheck(args[1:], stdout, stderr)
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
		if len(args) > 1 && args[0] == "help" {
			if _, ok := commandHelp[args[1]]; !ok {
				fmt.Fprintf(stderr, "gatehouse: no command %q\n\n%s", args[1], usage)
				return 2
			}
			if args[1] == "version" {
				fmt.Fprint(stdout, commandHelp["version"])
				return 0
			}
			return realMain([]string{args[1], "--help"}, stdout, stderr)
		}
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
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, missingConfig(path)
	}
	cfg, err := routes.Load(path)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// missingConfig says which file was looked for, why that one, and the
// two ways to name another.
func missingConfig(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	from := "given with --config"
	switch {
	case path == os.Getenv("GATEHOUSE_CONFIG"):
		from = "named by GATEHOUSE_CONFIG"
	case path == "gatehouse.toml":
		from = "the default: neither --config nor GATEHOUSE_CONFIG is set"
	}
	return fmt.Errorf("no config file %s (%s): pass --config FILE or set GATEHOUSE_CONFIG=FILE; "+
		"to start without a file: gatehouse run --from NAME --to URL", abs, from)
}

// plural returns "1 route", "2 routes".
func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	cfgFlag := fs.String("config", "", "config file")
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
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
	fmt.Fprintf(stdout, "%s: ok (%s)\n", path, plural(len(cfg.Routes), "route"))
	return 0
}

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	cfgFlag := fs.String("config", "", "config file")
	var from, to multiFlag
	fs.Var(&from, "from", "quick start: a host name to serve (repeatable, paired with --to)")
	fs.Var(&to, "to", "quick start: the upstream for the preceding --from, e.g. http://127.0.0.1:8080")
	httpsAddr := fs.String("https", ":443", "quick start: https listen address")
	httpAddr := fs.String("http", ":80", "quick start: http listen address (\"\" disables)")
	adminAddr := fs.String("admin", "127.0.0.1:2019", "quick start: admin listen address (\"\" disables)")
	email := fs.String("email", os.Getenv(routes.EnvACMEEmail), "quick start: ACME account email")
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
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
	// before anything is served: a SIGHUP that comes as soon as the
	// listeners answer must reload, not end the process (SIGHUP's
	// default action); signals during the start wait in the channel
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	in, err := start(cfg, startOptions{logger: log})
	if err != nil {
		fmt.Fprintln(stderr, "gatehouse:", err)
		return 1
	}
	// the Go heap's soft limit from the container's (memlimit.go): set
	// as the store's index and the first loads begin in the background,
	// after a failed start (which must say one thing, in one line)
	applyMemoryLimit(log, os.Getenv, "/sys/fs/cgroup", "/proc/self/cgroup")
	if cfg.Storage.Backend == "file" {
		msg := "certificates and keys are stored in " + cfg.Storage.Dir
		if path == "" {
			msg += " (quick start; 'gatehouse certs' reads them there, GATEHOUSE_STORAGE_DIR changes it)"
		}
		log.Info(msg, "storage", cfg.Storage.Dir)
	}
	trimCtx, stopTrim := context.WithCancel(context.Background())
	defer stopTrim()
	go newMemTrimmer().run(trimCtx)

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

func cmdHealthcheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	url := fs.String("url", "", "health URL (default: http://<[listen] admin>/healthz)")
	cfgFlag := fs.String("config", "", "config file, to find the admin address")
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
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
