package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/routes"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig"
	"github.com/gatehouse-proxy/gatehouse/tlsconfig/etcdstore"
)

const storageUsage = `Usage:
  gatehouse storage copy --from STORE --to STORE [--overwrite]

Copies every certificate, key, ACME account and OCSP staple from one store
to another, byte for byte, and reads each one back. It never deletes
anything; a key that already exists in the destination with other contents
stops the copy before anything is written, unless --overwrite. Stop the
instances writing to the source first.

STORE is one of:
  dir:/var/lib/gatehouse                  a storage directory ([storage] backend = "file")
  etcd://HOST:PORT[,HOST:PORT...]/PREFIX/  etcd over plain http; PREFIX defaults to gatehouse/
  config:FILE                             the [storage] of a gatehouse config file
                                          (for etcd with TLS or a username)
`

func cmdStorage(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && isHelp(args[0]) {
		fmt.Fprint(stdout, storageUsage)
		return 0
	}
	if len(args) == 0 || args[0] != "copy" {
		fmt.Fprint(stderr, storageUsage)
		return 2
	}
	fs := flag.NewFlagSet("storage copy", flag.ContinueOnError)
	from := fs.String("from", "", "source store")
	to := fs.String("to", "", "destination store")
	overwrite := fs.Bool("overwrite", false, "replace keys that differ in the destination")
	if code, ok := parseFlags(fs, args[1:], stdout, stderr); !ok {
		return code
	}
	if *from == "" || *to == "" || fs.NArg() > 0 {
		fmt.Fprint(stderr, storageUsage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	msg, err := storageCopy(ctx, *from, *to, *overwrite)
	if err != nil {
		fmt.Fprintln(stderr, "gatehouse storage copy:", err)
		return 1
	}
	fmt.Fprintln(stdout, msg)
	return 0
}

// storageCopy copies from → to and returns the report line.
func storageCopy(ctx context.Context, fromSpec, toSpec string, overwrite bool) (string, error) {
	from, err := openStore(fromSpec, true)
	if err != nil {
		return "", fmt.Errorf("--from: %w", err)
	}
	defer closeStore(from)
	to, err := openStore(toSpec, false)
	if err != nil {
		return "", fmt.Errorf("--to: %w", err)
	}
	defer closeStore(to)

	st, err := etcdstore.CopyTree(ctx, from, to, etcdstore.CopyOptions{
		Overwrite: overwrite,
		// A file store's lock files are coordination of the moment,
		// not data; copied, they would look like held locks.
		Skip: func(key string) bool { return key == "locks" || strings.HasPrefix(key, "locks/") },
	})
	if errors.Is(err, etcdstore.ErrConflict) {
		return "", fmt.Errorf("%w\nthe destination already holds other versions of these keys (replicas using it may have renewed them); pass --overwrite to replace them with the source's", err)
	}
	if err != nil {
		return "", fmt.Errorf("%w (after %d keys copied; nothing was deleted, re-run to finish)", err, st.Copied)
	}
	if st.Copied+st.Same == 0 {
		return "", fmt.Errorf("nothing to copy: %s holds no keys (wrong path or prefix?)", fromSpec)
	}
	msg := fmt.Sprintf("copied %d keys from %s to %s", st.Copied, fromSpec, toSpec)
	var notes []string
	if st.Same > 0 {
		notes = append(notes, fmt.Sprintf("%d already there with the same contents", st.Same))
	}
	if st.Skipped > 0 {
		notes = append(notes, fmt.Sprintf("%d lock files skipped", st.Skipped))
	}
	if len(notes) > 0 {
		msg += " (" + strings.Join(notes, ", ") + ")"
	}
	return msg, nil
}

// openStore opens a STORE argument. A source directory must exist: a
// typo must not read as an empty store.
func openStore(spec string, source bool) (certmagic.Storage, error) {
	kind, rest, ok := strings.Cut(spec, ":")
	if !ok {
		return nil, fmt.Errorf("%q: want dir:PATH, etcd://HOST:PORT/PREFIX/ or config:FILE", spec)
	}
	switch kind {
	case "dir":
		if rest == "" {
			return nil, fmt.Errorf("%q: no directory", spec)
		}
		if source {
			fi, err := os.Stat(rest)
			if err != nil {
				return nil, fmt.Errorf("source directory: %w", err)
			}
			if !fi.IsDir() {
				return nil, fmt.Errorf("source %s is not a directory", rest)
			}
			return &certmagic.FileStorage{Path: rest}, nil
		}
		return tlsconfig.OpenStorage(routes.Storage{Backend: "file", Dir: rest})
	case "etcd":
		s, err := parseEtcdSpec(spec)
		if err != nil {
			return nil, err
		}
		return tlsconfig.OpenStorage(s)
	case "config":
		cfg, err := routes.Load(rest)
		if err != nil {
			return nil, err
		}
		if source && cfg.Storage.Backend == "file" {
			return openStore("dir:"+cfg.Storage.Dir, true)
		}
		return tlsconfig.OpenStorage(cfg.Storage)
	}
	return nil, fmt.Errorf("%q: unknown store kind %q: want dir:, etcd:// or config:", spec, kind)
}

// parseEtcdSpec reads etcd://HOST:PORT[,HOST:PORT...][/PREFIX/].
func parseEtcdSpec(spec string) (routes.Storage, error) {
	rest, ok := strings.CutPrefix(spec, "etcd://")
	if !ok {
		return routes.Storage{}, fmt.Errorf("%q: want etcd://HOST:PORT[,HOST:PORT...]/PREFIX/", spec)
	}
	hosts, prefix, _ := strings.Cut(rest, "/")
	s := routes.Storage{Backend: "etcd", Prefix: prefix}
	for _, h := range strings.Split(hosts, ",") {
		ep, err := routes.EtcdEndpoint(h)
		if err != nil {
			return s, fmt.Errorf("%q: %w", spec, err)
		}
		s.Endpoints = append(s.Endpoints, "http://"+ep)
	}
	return s, nil
}

func closeStore(s certmagic.Storage) {
	if c, ok := s.(io.Closer); ok {
		c.Close()
	}
}
