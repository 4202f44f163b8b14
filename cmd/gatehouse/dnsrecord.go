package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
)

// cmdDNSRecord prints the dns-persist-01 TXT record for a name:
// `gatehouse dns-record NAME [--config FILE] [--json]`. It works before
// the first run: it registers the ACME account (as gatehouse would) when
// storage has none, and asks the CA's directory for its issuer domain.
func cmdDNSRecord(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dns-record", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgFlag := fs.String("config", "", "config file")
	asJSON := fs.Bool("json", false, `print {"name": ..., "value": ...}`)
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if name == "" && fs.NArg() == 1 {
		name = fs.Arg(0)
	} else if name == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: gatehouse dns-record NAME [--config FILE] [--json]")
		return 2
	}
	cfg, err := loadConfig(configPath(*cfgFlag))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	storage, err := tlsconfig.OpenStorage(cfg.Storage)
	if err != nil {
		fmt.Fprintln(stderr, "gatehouse dns-record:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rec, err := tlsconfig.DNSPersistRecord(ctx, storage, cfg, name)
	if err != nil {
		fmt.Fprintln(stderr, "gatehouse dns-record:", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rec)
		return 0
	}
	fmt.Fprintln(stdout, rec)
	return 0
}
