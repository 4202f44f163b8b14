package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/gatehouse-proxy/gatehouse/routes"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
)

// cmdECH prints what to publish in DNS for Encrypted Client Hello:
// `gatehouse ech`. The keys live in storage (shared by replicas); when
// there are none yet it makes them, so the record can be published
// before the first run.
func cmdECH(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ech", flag.ContinueOnError)
	cfgFlag := fs.String("config", "", "config file")
	asJSON := fs.Bool("json", false, "print JSON: public_name, config_list, https_record, records")
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	cfg, err := loadConfig(configPath(*cfgFlag))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if !cfg.ECH.Enabled() {
		fmt.Fprintln(stderr, "gatehouse ech: ECH is off; turn it on with [ech] public_name = \"<a name gatehouse serves>\"")
		return 1
	}
	storage, err := tlsconfig.OpenStorage(cfg.Storage)
	if err != nil {
		fmt.Fprintln(stderr, "gatehouse ech:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, public, err := tlsconfig.LoadECH(ctx, storage, cfg, slog.New(slog.NewTextHandler(stderr, nil)))
	if err != nil {
		fmt.Fprintln(stderr, "gatehouse ech:", err)
		return 1
	}
	alpn := []string{"h2", "http/1.1"}
	type out struct {
		PublicName  string   `json:"public_name"`
		ConfigList  string   `json:"config_list"`
		HTTPSRecord string   `json:"https_record"`
		Records     []string `json:"records"` // one HTTPS record per name ECH hides
	}
	o := out{PublicName: public, ConfigList: base64.StdEncoding.EncodeToString(list),
		HTTPSRecord: tlsconfig.HTTPSRecord(public, alpn, list)}
	for _, name := range echNames(cfg) {
		o.Records = append(o.Records, tlsconfig.HTTPSRecord(name, alpn, list))
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(o)
		return 0
	}
	fmt.Fprintf(stdout, "public name:  %s\nconfig list:  %s\n\nPublish an HTTPS record for each name (clients look up the name they visit):\n", o.PublicName, o.ConfigList)
	for _, r := range o.Records {
		fmt.Fprintln(stdout, r)
	}
	return 0
}

// echNames are the exact names of routes that terminate TLS: the names
// an HTTPS record with ech= hides. Passthrough routes are routed by the
// outer name only and cannot use ECH.
func echNames(cfg *routes.Config) []string {
	var names []string
	for _, e := range routes.NewTable(cfg).Entries() {
		if e.Mode() == routes.ModePassthrough {
			continue
		}
		for _, h := range e.Hosts {
			if h != "*" && (len(h) < 2 || h[:2] != "*.") {
				names = append(names, h)
			}
		}
	}
	return names
}
