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
	alpn := tlsconfig.ECHALPN(cfg)
	type out struct {
		PublicName  string   `json:"public_name"`
		ConfigList  string   `json:"config_list"`
		HTTPSRecord string   `json:"https_record"`
		Records     []string `json:"records"` // one HTTPS record per name ECH hides
		// Published is what gatehouse put into DNS itself through the
		// [acme.dns] provider; absent when it publishes nothing.
		Published *tlsconfig.ECHPublished `json:"published,omitempty"`
	}
	o := out{PublicName: public, ConfigList: base64.StdEncoding.EncodeToString(list),
		HTTPSRecord: tlsconfig.HTTPSRecord(public, alpn, list)}
	o.Published, _ = tlsconfig.LoadECHPublished(ctx, storage, list)
	for _, name := range tlsconfig.ECHNames(cfg) {
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
	if p := o.Published; p != nil {
		switch {
		case p.Current:
			fmt.Fprintf(stdout, "\ngatehouse published these records itself ([acme.dns]), last at %s.\n", p.At.UTC().Format(time.RFC3339))
		case p.Error != "":
			fmt.Fprintf(stdout, "\ngatehouse could not publish them ([acme.dns]) at %s: %s\n", p.ErrorAt.UTC().Format(time.RFC3339), p.Error)
		default:
			fmt.Fprintln(stdout, "\nthe records in DNS carry an older config; gatehouse publishes the current one within a minute ([acme.dns])")
		}
	}
	return 0
}
