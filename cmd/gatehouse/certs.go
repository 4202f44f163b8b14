package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gatehouse-proxy/gatehouse/routes"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
)

// cmdCerts prints what storage holds for every name: `gatehouse certs`.
// It only reads storage, so it works beside a running gatehouse and when
// none runs.
func cmdCerts(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("certs", flag.ContinueOnError)
	cfgFlag := fs.String("config", "", "config file")
	storageDir := fs.String("storage", "", "read this storage directory; no config file needed (a quick start's)")
	asJSON := fs.Bool("json", false, "print JSON (an array, one object per name) for scripts")
	root := fs.Bool("root", false, "print the internal CA's root certificate (PEM) and exit")
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	cfg, err := certsConfig(*cfgFlag, *storageDir)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	storage, err := tlsconfig.OpenStorageForReading(cfg.Storage)
	if err != nil {
		fmt.Fprintln(stderr, "gatehouse certs:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if *root {
		pem, err := storage.Load(ctx, tlsconfig.RootCertKey)
		if err != nil {
			fmt.Fprintf(stderr, "gatehouse certs: no internal CA root in storage (%v); it is created when a route uses tls = \"internal\"\n", err)
			return 1
		}
		_, _ = stdout.Write(pem)
		return 0
	}
	infos, err := tlsconfig.Inventory(ctx, storage, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "gatehouse certs:", err)
		return 1
	}
	// the ACME accounts, and the CAA record pinning each name to its
	// account: the CA's issuer domain comes from its directory (one GET)
	var accounts []tlsconfig.AccountInfo
	for _, ci := range infos {
		if ci.Source == "acme" || ci.Source == "on_demand" {
			accounts = tlsconfig.Accounts(ctx, storage, cfg, true)
			tlsconfig.AddCAA(infos, cfg, accounts)
			break
		}
	}
	if *asJSON {
		if infos == nil {
			infos = []tlsconfig.CertInfo{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(infos); err != nil {
			fmt.Fprintln(stderr, "gatehouse certs:", err)
			return 1
		}
		return 0
	}
	printCerts(stdout, infos, time.Now())
	if len(infos) == 0 && cfg.Storage.Backend == "file" {
		fmt.Fprintf(stderr, "no certificates in %s\n", cfg.Storage.Dir)
	}
	printAccounts(stdout, infos, accounts)
	return 0
}

// certsConfig is the config `gatehouse certs` reads storage through:
// --storage DIR alone; else the config file; else, when no file was named
// and ./gatehouse.toml does not exist, the quick start's storage.
func certsConfig(cfgFlag, storageDir string) (*routes.Config, error) {
	if storageDir != "" && cfgFlag != "" {
		return nil, fmt.Errorf("gatehouse certs: pass --config or --storage, not both")
	}
	path := configPath(cfgFlag)
	if storageDir == "" && cfgFlag == "" && os.Getenv("GATEHOUSE_CONFIG") == "" {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			storageDir = routes.QuickStorageDir()
			if env := os.Getenv(routes.EnvStorageDir); env != "" {
				storageDir = env
			}
		}
	}
	if storageDir == "" {
		return loadConfig(path)
	}
	cfg := &routes.Config{}
	cfg.Storage.Dir = storageDir
	cfg.ApplyDefaults()
	return cfg, nil
}

// printAccounts writes each ACME account and the CAA records (RFC 8657)
// that let only it issue for the configured names.
func printAccounts(w io.Writer, infos []tlsconfig.CertInfo, accounts []tlsconfig.AccountInfo) {
	for _, a := range accounts {
		fmt.Fprintf(w, "\nACME account at %s (%s): %s\n", a.Directory, dash(a.Email), dash(a.AccountURI))
		if a.Error != "" {
			fmt.Fprintf(w, "  (%s)\n", a.Error)
		}
		var lines []string
		for _, ci := range infos {
			if ci.CAA != "" && ci.Issuer == a.IssuerKey || ci.CAA != "" && ci.Issuer == "" && a.IssuerKey == accounts[0].IssuerKey {
				lines = append(lines, ci.CAA)
			}
		}
		if len(lines) > 0 {
			fmt.Fprintln(w, "  CAA records that let only this account issue for each name (RFC 8657):")
			for _, l := range lines {
				fmt.Fprintln(w, "  "+l)
			}
		}
		var persist []string
		for _, ci := range infos {
			if ci.DNSPersist != nil && (ci.Issuer == a.IssuerKey || ci.Issuer == "" && a.IssuerKey == accounts[0].IssuerKey) {
				if l := ci.DNSPersist.String(); !slices.Contains(persist, l) {
					persist = append(persist, l)
				}
			}
		}
		if len(persist) > 0 {
			fmt.Fprintln(w, "  dns-persist-01 records to create once (they bind the names to this account):")
			for _, l := range persist {
				fmt.Fprintln(w, "  "+l)
			}
		}
	}
}

// printCerts writes the table for humans: one line per name, times in
// UTC with how far away they are.
func printCerts(w io.Writer, infos []tlsconfig.CertInfo, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROUTE\tSOURCE\tSTATE\tISSUER\tSERIAL\tNOT AFTER\tRENEWS\tSTAPLE\tLAST ERROR\tNEXT RETRY")
	for _, ci := range infos {
		route := "-"
		if ci.Route > 0 {
			route = fmt.Sprintf("#%d", ci.Route)
		}
		issuer := ci.Issuer
		if ci.IssuerCN != "" {
			issuer += " (" + ci.IssuerCN + ")"
		}
		renew := when(ci.RenewAt, now)
		if ci.RenewBy == "ari" {
			renew += " by ARI"
		}
		if ci.ARI != nil && !ci.ARI.WindowStart.IsZero() {
			renew += fmt.Sprintf(" [window %s..%s]", ci.ARI.WindowStart.UTC().Format("01-02 15:04"), ci.ARI.WindowEnd.UTC().Format("01-02 15:04"))
		}
		staple := "-"
		if s := ci.Staple; s != nil {
			staple = s.Status
			if !s.ThisUpdate.IsZero() {
				staple += fmt.Sprintf(", %s old, next %s", short(time.Duration(s.AgeSeconds)*time.Second), when(s.NextUpdate, now))
			}
			if s.Stale {
				staple += " STALE"
			}
		}
		lastErr := ci.LastError
		if len(lastErr) > 60 {
			lastErr = lastErr[:57] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			ci.Name, route, ci.Source, ci.State, dash(issuer), dash(ci.Serial), when(ci.NotAfter, now), renew, staple, dash(lastErr), when(ci.NextRetry, now))
	}
	tw.Flush()
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

// when formats t as "2006-01-02 15:04Z (in 3d)" or "(5h ago)".
func when(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(now)
	rel := "in " + short(d)
	if d < 0 {
		rel = short(-d) + " ago"
	}
	return t.UTC().Format("2006-01-02 15:04Z") + " (" + rel + ")"
}

// short renders a duration in its largest unit: 3d, 5h, 12m, 40s.
func short(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	case d >= 2*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	case d >= 2*time.Minute:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	}
	return fmt.Sprintf("%ds", int(d.Seconds()))
}
