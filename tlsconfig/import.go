package tlsconfig

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"golang.org/x/crypto/acme/autocert"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// Moving in without re-issuing: certificates a Go program's autocert or
// a Caddy (certmagic) instance already holds are copied into gatehouse's
// storage, where certmagic finds them as managed certificates: served at
// once, renewed by gatehouse when their time comes. Nothing here talks
// to a CA; a name gatehouse already holds a certificate for is left
// alone, so an import never replaces or loses anything.

// ImportResult is what happened to one certificate found in the source.
type ImportResult struct {
	Name      string    `json:"name"`
	From      string    `json:"from"`   // source entry (autocert key, Caddy storage key)
	Result    string    `json:"result"` // imported, skipped, failed
	Reason    string    `json:"reason,omitempty"`
	Serial    string    `json:"serial,omitempty"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	IssuerKey string    `json:"issuer_key,omitempty"` // where it is (or would be) stored

	unusable bool // this entry cannot be used (expired, wrong name, broken): try another
}

// ImportOptions tune an import.
type ImportOptions struct {
	DryRun bool // report what would be imported, write nothing
}

// importedMeta is the issuer data written with a certificate imported
// from autocert, which records nothing about its issuer.
type importedMeta struct {
	ImportedFrom string    `json:"imported_from"`
	ImportedAt   time.Time `json:"imported_at"`
}

// ImportAutocert copies the certificates of an autocert.DirCache into
// dst, under the issuer key of cfg's first ACME CA (autocert does not
// record which CA issued them). Entries are read through autocert's own
// DirCache; the account key and challenge entries are skipped; a name
// with both an ECDSA and an RSA ("+rsa") certificate gets the ECDSA one.
func ImportAutocert(ctx context.Context, dir string, dst certmagic.Storage, cfg *routes.Config, opts ImportOptions) ([]ImportResult, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("autocert cache %s: %w", dir, err)
	}
	cache := autocert.DirCache(dir)
	target := acmeIssuerKeys(cfg)[0]
	im := newImporter(dst, cfg, opts)

	keys := map[string][]string{} // name -> cache keys, ECDSA first
	for _, ent := range entries {
		key := ent.Name()
		if ent.IsDir() || strings.HasPrefix(key, ".") || strings.HasPrefix(key, "acme_account") {
			continue
		}
		name, suffix, _ := strings.Cut(key, "+")
		switch suffix {
		case "":
			keys[name] = append([]string{key}, keys[name]...)
		case "rsa":
			keys[name] = append(keys[name], key)
		default: // +token (TLS-ALPN challenge), +http-01 (HTTP token), temp files
		}
	}
	names := make([]string, 0, len(keys))
	for n := range keys {
		names = append(names, n)
	}
	sort.Strings(names)

	var out []ImportResult
	for _, name := range names {
		var res ImportResult
		for _, key := range keys[name] {
			res = ImportResult{Name: name, From: filepath.Join(dir, key), IssuerKey: target}
			data, err := cache.Get(ctx, key)
			if err != nil {
				res.Result, res.Reason, res.unusable = "failed", err.Error(), true
				continue
			}
			// autocert writes the key, then the chain, in one PEM file;
			// crypto/tls picks each out of it
			pair, err := tls.X509KeyPair(data, data)
			if err != nil {
				res.Result, res.Reason, res.unusable = "failed", fmt.Sprintf("not a certificate and its key: %v", err), true
				continue
			}
			chainPEM, keyPEM, err := encodePair(pair)
			if err != nil {
				res.Result, res.Reason = "failed", err.Error()
				continue
			}
			meta, _ := json.Marshal(importedMeta{ImportedFrom: "autocert " + filepath.Join(dir, key), ImportedAt: time.Now().UTC()})
			res = im.put(ctx, res, pair, chainPEM, keyPEM, meta)
			if !res.unusable {
				break // else try the name's other (RSA) entry
			}
		}
		out = append(out, res)
	}
	return out, nil
}

// ImportCaddy copies the certificates of a Caddy (or any certmagic)
// storage folder into dst. dir is Caddy's data directory (holding
// certificates/) or its certificates/ folder itself; it is read with
// certmagic's FileStorage. A certificate from a CA gatehouse's config
// names keeps that CA's issuer key (and its stored ACME data: ARI
// window, order URL); one from another CA is filed under gatehouse's
// first ACME CA, which renews it. Caddy's internal CA ("local") is
// skipped: gatehouse has its own (tls = "internal").
func ImportCaddy(ctx context.Context, dir string, dst certmagic.Storage, cfg *routes.Config, opts ImportOptions) ([]ImportResult, error) {
	if filepath.Base(filepath.Clean(dir)) == "certificates" {
		dir = filepath.Dir(filepath.Clean(dir))
	}
	if _, err := os.Stat(filepath.Join(dir, "certificates")); err != nil {
		return nil, fmt.Errorf("%s has no certificates/ folder: give Caddy's data directory (e.g. ~/.local/share/caddy or /data/caddy)", dir)
	}
	src := &certmagic.FileStorage{Path: dir}
	ours := acmeIssuerKeys(cfg)
	im := newImporter(dst, cfg, opts)

	issuers, err := src.List(ctx, "certificates", false)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", dir, err)
	}
	var out []ImportResult
	for _, issuerPrefix := range issuers {
		issuerKey := path.Base(issuerPrefix)
		sites, err := src.List(ctx, issuerPrefix, false)
		if err != nil {
			continue
		}
		target := ours[0]
		for _, k := range ours {
			if k == issuerKey {
				target = k
			}
		}
		for _, site := range sites {
			base := path.Base(site)
			res := ImportResult{Name: base, From: filepath.Join(dir, filepath.FromSlash(site)), IssuerKey: target}
			if issuerKey == "local" {
				res.Result, res.Reason = "skipped", "signed by Caddy's internal CA; gatehouse has its own (tls = \"internal\")"
				out = append(out, res)
				continue
			}
			chainPEM, err := src.Load(ctx, path.Join(site, base+".crt"))
			if err != nil {
				continue // not a certificate folder
			}
			keyPEM, err := src.Load(ctx, path.Join(site, base+".key"))
			if err != nil {
				res.Result, res.Reason = "failed", fmt.Sprintf("no private key beside the certificate: %v", err)
				out = append(out, res)
				continue
			}
			pair, err := tls.X509KeyPair(chainPEM, keyPEM)
			if err != nil {
				res.Result, res.Reason = "failed", fmt.Sprintf("certificate and key do not go together: %v", err)
				out = append(out, res)
				continue
			}
			var issuerData json.RawMessage
			if metaJSON, err := src.Load(ctx, path.Join(site, base+".json")); err == nil {
				var meta certmagic.CertificateResource
				if json.Unmarshal(metaJSON, &meta) == nil {
					issuerData = meta.IssuerData
				}
			}
			if len(issuerData) == 0 {
				issuerData, _ = json.Marshal(importedMeta{ImportedFrom: "caddy " + res.From, ImportedAt: time.Now().UTC()})
			}
			// a certificate for several names is stored once per name,
			// which is how gatehouse looks certificates up
			for _, name := range leafNames(pair.Leaf) {
				r := res
				r.Name = name
				out = append(out, im.put(ctx, r, pair, chainPEM, keyPEM, issuerData))
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

type importer struct {
	dst   certmagic.Storage
	cfg   *routes.Config
	table *routes.Table
	opts  ImportOptions
	keys  []string // every issuer key gatehouse may hold a name under
	done  map[string]bool
}

func newImporter(dst certmagic.Storage, cfg *routes.Config, opts ImportOptions) *importer {
	return &importer{
		dst: dst, cfg: cfg, table: routes.NewTable(cfg), opts: opts,
		keys: append(acmeIssuerKeys(cfg), InternalIssuerKey), done: map[string]bool{},
	}
}

// put stores one certificate for res.Name under res.IssuerKey, unless
// it is unusable, or gatehouse holds one for the name already.
func (im *importer) put(ctx context.Context, res ImportResult, pair tls.Certificate, chainPEM, keyPEM, issuerData []byte) ImportResult {
	leaf := pair.Leaf
	name := res.Name
	res.Serial, res.NotAfter = leaf.SerialNumber.Text(16), leaf.NotAfter
	skip := func(format string, args ...any) ImportResult {
		res.Result, res.Reason = "skipped", fmt.Sprintf(format, args...)
		return res
	}
	if err := leaf.VerifyHostname(name); err != nil && !slices.Contains(leafNames(leaf), name) {
		res.unusable = true
		return skip("the certificate does not cover %s", name)
	}
	if time.Now().After(leaf.NotAfter) {
		res.unusable = true
		return skip("expired %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if im.done[name] {
		return skip("imported from another entry already")
	}
	for _, k := range im.keys {
		if prev, err := im.dst.Load(ctx, certmagic.StorageKeys.SiteCert(k, name)); err == nil {
			serial := ""
			if chain, err := parsePEMChain(prev); err == nil {
				serial = chain[0].SerialNumber.Text(16)
			}
			return skip("gatehouse already has a certificate for %s (serial %s, %s); not replaced", name, serial, k)
		} else if !errors.Is(err, fs.ErrNotExist) {
			res.Result, res.Reason = "failed", fmt.Sprintf("reading gatehouse's storage: %v", err)
			return res
		}
	}
	switch e := im.table.Lookup(name); {
	case e == nil:
		res.Reason = "no route serves this name yet; it is served once one does"
	case e.Issuer != "acme":
		how := e.Issuer
		if how == "" {
			how = "passthrough: no certificate here"
		}
		return skip("route #%d gets its certificate another way (%s)", e.Index+1, how)
	}
	if im.opts.DryRun {
		res.Result = "would import"
		return res
	}

	meta, err := json.MarshalIndent(certmagic.CertificateResource{SANs: []string{name}, IssuerData: issuerData}, "", "\t")
	if err != nil {
		res.Result, res.Reason = "failed", err.Error()
		return res
	}
	// the lock certmagic takes to obtain the name, so a running gatehouse
	// does not start an order while the files are written. A gatehouse
	// whose order for the name keeps failing holds it for the whole
	// retry loop (the usual case when moving in: DNS still points at the
	// old server); then write without it: before each retry, certmagic
	// looks in storage and stops when it finds the imported certificate.
	if locked, err := tryLock(ctx, im.dst, "issue_cert_"+name); err != nil {
		res.Result, res.Reason = "failed", fmt.Sprintf("locking storage: %v", err)
		return res
	} else if locked {
		defer func() { _ = im.dst.Unlock(context.Background(), "issue_cert_"+name) }()
	} else {
		res.Reason = "gatehouse is ordering this name (its order lock is held); imported anyway: reload gatehouse to serve it"
	}
	// key first: a certificate in storage always has its key
	for _, kv := range []struct {
		key string
		val []byte
	}{
		{certmagic.StorageKeys.SitePrivateKey(res.IssuerKey, name), keyPEM},
		{certmagic.StorageKeys.SiteCert(res.IssuerKey, name), chainPEM},
		{certmagic.StorageKeys.SiteMeta(res.IssuerKey, name), meta},
	} {
		if err := im.dst.Store(ctx, kv.key, kv.val); err != nil {
			res.Result, res.Reason = "failed", fmt.Sprintf("writing %s: %v", kv.key, err)
			return res
		}
	}
	im.done[name] = true
	res.Result = "imported"
	return res
}

// encodePair returns a parsed certificate and key as certmagic stores
// them: the chain in PEM, the key in PEM.
func encodePair(pair tls.Certificate) (chainPEM, keyPEM []byte, err error) {
	for _, der := range pair.Certificate {
		chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyPEM, err = certmagic.PEMEncodePrivateKey(pair.PrivateKey)
	return chainPEM, keyPEM, err
}

// loadStored serves, on a reload, certificates that appeared in storage
// for configured names that have none cached: put there by `gatehouse
// import`, or by another instance sharing the storage. Names already
// served are not read (a reload must stay cheap with many names); the
// store sync pass (storesync.go) catches renewals. Called by Apply with
// m.mu held, so the storage reads run in the background.
func (m *Manager) loadStored() {
	go func() {
		type job struct {
			c    *certmagic.Config
			name string
		}
		var jobs []job
		m.mu.RLock() // once Apply is done; handshakes are not held up
		for name, c := range m.byName {
			// names in the lazy index are loaded from storage on first
			// handshake anyway (lazy.go)
			if c != m.manual && !isPattern(name) && !m.stored.pending(name) && len(m.cache.AllMatchingCertificates(name)) == 0 {
				jobs = append(jobs, job{c, name})
			}
		}
		m.mu.RUnlock()
		for _, j := range jobs {
			if m.ctx.Err() != nil {
				return
			}
			if err := m.syncName(m.ctx, j.c, j.name); err != nil {
				m.log.Warn("reload: reading storage for a name without a certificate", "name", j.name, "error", err)
				return
			}
		}
	}()
}

// tryLock takes a storage lock if it is free within a few seconds.
func tryLock(ctx context.Context, s certmagic.Storage, name string) (bool, error) {
	if tl, ok := s.(certmagic.TryLocker); ok {
		return tl.TryLock(ctx, name)
	}
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	err := s.Lock(lctx, name)
	if err != nil && lctx.Err() != nil && ctx.Err() == nil {
		return false, nil // held by someone else
	}
	return err == nil, err
}
