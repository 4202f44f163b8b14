package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
)

const importUsage = `usage: gatehouse import autocert|caddy DIR [--config FILE] [--dry-run] [--json]

  autocert DIR  a golang.org/x/crypto/acme/autocert DirCache directory
  caddy DIR     Caddy's data directory (with certificates/ in it), or any certmagic file storage

Copies the certificates and keys into gatehouse's storage ([storage] of the config)
without contacting any CA; gatehouse serves them when it starts or reloads (SIGHUP)
and renews them when they are due. Names gatehouse already has a certificate
for are left alone.
`

// cmdImport moves certificates in from autocert or Caddy:
// `gatehouse import autocert|caddy DIR`.
func cmdImport(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && isHelp(args[0]) {
		fmt.Fprint(stdout, importUsage)
		return 0
	}
	if len(args) < 1 || (args[0] != "autocert" && args[0] != "caddy") {
		fmt.Fprint(stderr, importUsage)
		return 2
	}
	kind := args[0]
	fs := flag.NewFlagSet("import "+kind, flag.ContinueOnError)
	cfgFlag := fs.String("config", "", "config file (its [storage] and [acme] say where certificates go)")
	dryRun := fs.Bool("dry-run", false, "show what would be imported; write nothing")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	// flags may come before or after DIR
	var dirs []string
	rest := args[1:]
	for {
		if code, ok := parseFlags(fs, rest, stdout, stderr); !ok {
			return code
		}
		if fs.NArg() == 0 {
			break
		}
		dirs = append(dirs, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(dirs) != 1 {
		fmt.Fprint(stderr, importUsage)
		return 2
	}
	cfg, err := loadConfig(configPath(*cfgFlag))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	storage, err := tlsconfig.OpenStorage(cfg.Storage)
	if err != nil {
		fmt.Fprintln(stderr, "gatehouse import:", err)
		return 1
	}
	// no deadline for the whole import (100,000 names take what they
	// take); each storage operation is bounded (ImportOptions.OpTimeout),
	// and an interrupt stops it between names
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	start := time.Now()
	opts := tlsconfig.ImportOptions{DryRun: *dryRun}
	var results []tlsconfig.ImportResult
	if kind == "autocert" {
		results, err = tlsconfig.ImportAutocert(ctx, dirs[0], storage, cfg, opts)
	} else {
		results, err = tlsconfig.ImportCaddy(ctx, dirs[0], storage, cfg, opts)
	}
	if err != nil && len(results) == 0 {
		fmt.Fprintln(stderr, "gatehouse import:", err)
		return 1
	}
	failed, imported, skipped, would := 0, 0, 0, 0
	for _, r := range results {
		switch r.Result {
		case "failed":
			failed++
		case "imported":
			imported++
		case "would import":
			would++
		case "skipped":
			skipped++
		}
	}
	bw := bufio.NewWriter(stdout) // a table row is many small writes
	defer bw.Flush()
	stdout = bw
	if *asJSON {
		if results == nil {
			results = []tlsconfig.ImportResult{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(results)
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tRESULT\tSERIAL\tNOT AFTER\tSTORED UNDER\tNOTE")
		for _, r := range results {
			na := "-"
			if !r.NotAfter.IsZero() {
				na = r.NotAfter.UTC().Format("2006-01-02 15:04Z")
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Result, dash(r.Serial), na, dash(r.IssuerKey), dash(r.Reason))
		}
		tw.Flush()
		if len(results) == 0 {
			fmt.Fprintf(stdout, "no certificates found in %s\n", dirs[0])
		}
	}
	took := time.Since(start).Round(time.Millisecond)
	if *dryRun {
		fmt.Fprintf(stderr, "gatehouse import: dry run: %d would be imported, %d skipped, %d failed (%s)\n", would, skipped, failed, took)
	} else {
		fmt.Fprintf(stderr, "gatehouse import: %d imported, %d skipped, %d failed in %s\n", imported, skipped, failed, took)
	}
	if err != nil { // interrupted: what was done is above
		fmt.Fprintln(stderr, "gatehouse import:", err)
		return 1
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "gatehouse import: %d certificate(s) could not be imported\n", failed)
		return 1
	}
	return 0
}
