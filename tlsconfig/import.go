package tlsconfig

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/certmagic"

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
}

// ImportOptions tune an import.
type ImportOptions struct {
	DryRun bool // report what would be imported, write nothing
	// Workers is how many entries are read, verified and written at
	// once; 0: 4 per CPU, at least 8.
	Workers int
	// OpTimeout bounds each storage operation (one listing, one load,
	// one store); 0: DefaultImportOpTimeout. Nothing bounds the import
	// as a whole: 100,000 names take what they take, and an interrupt
	// (the caller's ctx) stops it between names.
	OpTimeout time.Duration
}

// DefaultImportOpTimeout is ImportOptions.OpTimeout's default.
const DefaultImportOpTimeout = 30 * time.Second

// maxImportFile bounds one source file (a chain, a key, metadata): a
// certificate chain is a few KiB; anything this large is not one.
const maxImportFile = 1 << 20

// importBatch is how many source entries are read, checked and written
// together: on the file store one flush (syncfs) per batch makes its
// names durable, instead of an fsync per file. Tests make it smaller.
var importBatch = 1024

// importHook, when set (tests only), is called at the file store's
// commit points: "flushed" once a batch's staged names are durable,
// "renamed" after each name is moved into place (n: names moved so far).
var importHook func(stage string, n int)

// importSyncs counts the flushes and directory fsyncs of imports (tests
// assert it does not grow with the number of names).
var importSyncs atomic.Int64

// importedMeta is the issuer data written with a certificate imported
// from autocert, which records nothing about its issuer.
type importedMeta struct {
	ImportedFrom string    `json:"imported_from"`
	ImportedAt   time.Time `json:"imported_at"`
}

// importEntry is one entry of the source: an autocert name with its
// cache files (ECDSA first), or one Caddy site folder.
type importEntry struct {
	name   string   // autocert: the name; Caddy: the site folder's name
	files  []string // autocert: cache files in order of preference; Caddy: the site folder
	target string   // issuer key to store under
	caddy  bool
}

// importItem is one name of a verified certificate, on its way to storage.
type importItem struct {
	res        ImportResult
	final      bool // res is the outcome already (failed, skipped)
	chainPEM   []byte
	keyPEM     []byte
	issuerData []byte
	leafSerial string
	routeSkip  string   // the route serves the name another way
	existing   []string // issuer keys with a folder for the name (listed at the start)
	staged     string   // file store: the folder with the name's three files, not yet in place
}

// ImportAutocert copies the certificates of an autocert.DirCache into
// dst, under the issuer key of cfg's first ACME CA (autocert does not
// record which CA issued them). The account key and challenge entries
// are skipped; a name with both an ECDSA and an RSA ("+rsa") certificate
// gets the ECDSA one (the RSA one when the ECDSA one is unusable).
func ImportAutocert(ctx context.Context, dir string, dst certmagic.Storage, cfg *routes.Config, opts ImportOptions) ([]ImportResult, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("autocert cache %s: %w", dir, err)
	}
	target := acmeIssuerKeys(cfg)[0]
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
	work := make([]importEntry, len(names))
	for i, n := range names {
		files := make([]string, len(keys[n]))
		for j, k := range keys[n] {
			files[j] = filepath.Join(dir, k)
		}
		work[i] = importEntry{name: n, files: files, target: target}
	}
	im, err := newImporter(ctx, dst, cfg, opts)
	if err != nil {
		return nil, err
	}
	defer im.close()
	return im.run(ctx, work, nil)
}

// ImportCaddy copies the certificates of a Caddy (or any certmagic)
// storage folder into dst. dir is Caddy's data directory (holding
// certificates/) or its certificates/ folder itself, in certmagic's file
// layout. A certificate from a CA gatehouse's config names keeps that
// CA's issuer key (and its stored ACME data: ARI window, order URL); one
// from another CA is filed under gatehouse's first ACME CA, which renews
// it. Caddy's internal CA ("local") is skipped: gatehouse has its own
// (tls = "internal").
func ImportCaddy(ctx context.Context, dir string, dst certmagic.Storage, cfg *routes.Config, opts ImportOptions) ([]ImportResult, error) {
	if filepath.Base(filepath.Clean(dir)) == "certificates" {
		dir = filepath.Dir(filepath.Clean(dir))
	}
	certsDir := filepath.Join(dir, "certificates")
	if _, err := os.Stat(certsDir); err != nil {
		return nil, fmt.Errorf("%s has no certificates/ folder: give Caddy's data directory (e.g. ~/.local/share/caddy or /data/caddy)", dir)
	}
	ours := acmeIssuerKeys(cfg)
	issuers, err := os.ReadDir(certsDir)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", dir, err)
	}
	var work []importEntry
	var out []ImportResult
	for _, iss := range issuers {
		if !iss.IsDir() {
			continue
		}
		issuerKey := iss.Name()
		sites, err := os.ReadDir(filepath.Join(certsDir, issuerKey))
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
			if !site.IsDir() {
				continue
			}
			from := filepath.Join(certsDir, issuerKey, site.Name())
			if issuerKey == "local" {
				out = append(out, ImportResult{Name: site.Name(), From: from, IssuerKey: target, Result: "skipped",
					Reason: "signed by Caddy's internal CA; gatehouse has its own (tls = \"internal\")"})
				continue
			}
			work = append(work, importEntry{name: site.Name(), files: []string{from}, target: target, caddy: true})
		}
	}
	im, err := newImporter(ctx, dst, cfg, opts)
	if err != nil {
		return nil, err
	}
	defer im.close()
	out, err = im.run(ctx, work, out)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// importer writes a source's certificates into gatehouse's storage in
// batches: each batch is read and verified in parallel, checked against
// what storage held when the import started (one listing per issuer
// key, no per-name lock), and written in parallel. On the file store a
// name's three files are written into a staging folder beside
// certificates/, made durable with one flush per batch, then moved into
// place with one rename of the folder: a name is either absent or
// complete in storage, whatever the moment the import is interrupted
// (even by a crash), and the rename fails rather than replace a folder
// that exists meanwhile (a running gatehouse that just obtained the
// name). Other stores (etcd) get the key, the chain, then the metadata,
// each write bounded by OpTimeout.
type importer struct {
	dst     certmagic.Storage
	files   *certmagic.FileStorage // dst when it is the file store
	cfg     *routes.Config
	table   *routes.Table
	opts    ImportOptions
	keys    []string            // every issuer key gatehouse may hold a name under
	held    map[string][]string // safe name -> issuer keys with a folder for it
	done    map[string]bool     // names taken by an earlier entry
	workers int

	mu       sync.Mutex // the staging fields below
	staging  string     // file store: this import's staging folder
	lockFile *os.File   // held while the import runs: a crashed one's folder can go
	parents  map[string]bool
	seq      int
}

func newImporter(ctx context.Context, dst certmagic.Storage, cfg *routes.Config, opts ImportOptions) (*importer, error) {
	if opts.OpTimeout <= 0 {
		opts.OpTimeout = DefaultImportOpTimeout
	}
	im := &importer{
		dst: dst, cfg: cfg, table: routes.NewTable(cfg), opts: opts,
		keys: append(acmeIssuerKeys(cfg), InternalIssuerKey), held: map[string][]string{}, done: map[string]bool{},
		workers: opts.Workers, parents: map[string]bool{},
	}
	if im.workers <= 0 {
		im.workers = max(8, 4*runtime.GOMAXPROCS(0))
	}
	im.files, _ = dst.(*certmagic.FileStorage)
	// one pass over the store: which names it holds, under which issuer
	for _, k := range im.keys {
		sites, err := im.listSites(ctx, certmagic.StorageKeys.CertsPrefix(k))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listing gatehouse's storage (%s): %w", k, err)
		}
		for _, s := range sites {
			im.held[s] = append(im.held[s], k)
		}
	}
	return im, nil
}

func (im *importer) listSites(ctx context.Context, dir string) ([]string, error) {
	if im.files != nil {
		ents, err := os.ReadDir(im.files.Filename(dir))
		if err != nil {
			return nil, err
		}
		out := make([]string, 0, len(ents))
		for _, e := range ents {
			if e.IsDir() {
				out = append(out, e.Name())
			}
		}
		return out, nil
	}
	lctx, cancel := context.WithTimeout(ctx, im.opts.OpTimeout)
	defer cancel()
	keys, err := im.dst.List(lctx, dir, false)
	for i, k := range keys {
		keys[i] = path.Base(k)
	}
	return keys, err
}

// close removes this import's staging folder (empty unless a batch
// failed half-way).
func (im *importer) close() {
	if im.staging != "" {
		_ = os.RemoveAll(im.staging)
	}
	if im.lockFile != nil {
		_ = im.lockFile.Close()
	}
}

// run imports work in batches, appending each entry's results to out.
// A batch's commit (file store: one flush, then a rename per name, all
// in one goroutine) runs while the next batch is read, verified and
// staged: the workers do not wait for the disk, and the flush overlaps
// their CPU work.
func (im *importer) run(ctx context.Context, work []importEntry, out []ImportResult) ([]ImportResult, error) {
	var committing chan struct{} // the previous batch's commit
	var previous []*importItem
	collect := func() {
		if committing == nil {
			return
		}
		<-committing
		for _, it := range previous {
			out = append(out, it.res)
		}
		committing, previous = nil, nil
	}
	for start := 0; start < len(work); start += importBatch {
		if err := ctx.Err(); err != nil {
			collect()
			return out, fmt.Errorf("interrupted after %d of %d entries: %w", start, len(work), err)
		}
		batch := work[start:min(start+importBatch, len(work))]
		// read and verify, in parallel
		prepared := make([][]*importItem, len(batch))
		im.parallel(len(batch), func(i int) { prepared[i] = im.prepare(batch[i]) })
		// decide in source order (the first entry for a name wins)
		var items []*importItem
		for _, its := range prepared {
			for _, it := range its {
				im.decide(it)
				items = append(items, it)
			}
		}
		// check and write, in parallel
		im.parallel(len(items), func(i int) { im.write(ctx, items[i]) })
		// commits go one at a time, in batch order
		collect()
		done := make(chan struct{})
		go func() {
			defer close(done)
			im.commit(items)
		}()
		committing, previous = done, items
	}
	collect()
	return out, nil
}

// parallel runs fn(0..n-1) on the importer's workers.
func (im *importer) parallel(n int, fn func(int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, im.workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
}

// readSource reads one source file, refusing what cannot be a
// certificate, key or metadata file for its size. It reads through
// plain system calls: os.Open's poller registration costs more than the
// read of a 2 KiB file, 100,000 times over.
func readSource(name string) ([]byte, error) {
	fd, err := syscall.Open(name, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	if st.Size > maxImportFile {
		return nil, fmt.Errorf("%s is larger than %d KiB: not a certificate, key or metadata file", name, maxImportFile>>10)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil, fmt.Errorf("%s is not a regular file", name)
	}
	data := make([]byte, st.Size)
	for off := 0; off < len(data); {
		n, err := syscall.Read(fd, data[off:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: name, Err: err}
		}
		if n == 0 { // shrank meanwhile
			return data[:off], nil
		}
		off += n
	}
	return data, nil
}

// writeNew writes data into a new file (mode 0600) through plain
// system calls (see readSource); no fsync: the batch is flushed at once.
func writeNew(name string, data []byte) error {
	fd, err := syscall.Open(name, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return &fs.PathError{Op: "create", Path: name, Err: err}
	}
	for off := 0; off < len(data); {
		n, err := syscall.Write(fd, data[off:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			syscall.Close(fd)
			return &fs.PathError{Op: "write", Path: name, Err: err}
		}
		off += n
	}
	if err := syscall.Close(fd); err != nil {
		return &fs.PathError{Op: "close", Path: name, Err: err}
	}
	return nil
}

// prepare reads one entry and verifies its certificate and key: they
// parse, the key is the certificate's, the certificate covers the name
// and has not expired.
func (im *importer) prepare(e importEntry) []*importItem {
	if e.caddy {
		return im.prepareCaddy(e)
	}
	var res ImportResult
	for _, file := range e.files {
		res = ImportResult{Name: e.name, From: file, IssuerKey: e.target}
		data, err := readSource(file)
		if err != nil {
			res.Result, res.Reason = "failed", err.Error()
			continue
		}
		// autocert writes the key, then the chain, in one PEM file;
		// crypto/tls picks each out of it
		pair, err := tls.X509KeyPair(data, data)
		if err != nil {
			res.Result, res.Reason = "failed", fmt.Sprintf("not a certificate and its key: %v", err)
			continue
		}
		if err := chainParses(pair); err != nil {
			res.Result, res.Reason = "failed", err.Error()
			continue
		}
		chainPEM, keyPEM, err := encodePair(pair, data)
		if err != nil {
			res.Result, res.Reason = "failed", err.Error()
			break
		}
		meta, _ := json.Marshal(importedMeta{ImportedFrom: "autocert " + file, ImportedAt: time.Now().UTC()})
		it := &importItem{res: res, chainPEM: chainPEM, keyPEM: keyPEM, issuerData: meta}
		if !it.usable(pair.Leaf) {
			res = it.res
			continue // try the name's other (RSA) entry
		}
		return []*importItem{it}
	}
	return []*importItem{{res: res, final: true}}
}

func (im *importer) prepareCaddy(e importEntry) []*importItem {
	site := e.files[0]
	res := ImportResult{Name: e.name, From: site, IssuerKey: e.target}
	failed := func(format string, args ...any) []*importItem {
		res.Result, res.Reason = "failed", fmt.Sprintf(format, args...)
		return []*importItem{{res: res, final: true}}
	}
	chainPEM, err := readSource(filepath.Join(site, e.name+".crt"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil // not a certificate folder
	}
	if err != nil {
		return failed("%v", err)
	}
	keyPEM, err := readSource(filepath.Join(site, e.name+".key"))
	if err != nil {
		return failed("no private key beside the certificate: %v", err)
	}
	pair, err := tls.X509KeyPair(chainPEM, keyPEM)
	if err != nil {
		return failed("certificate and key do not go together: %v", err)
	}
	if err := chainParses(pair); err != nil {
		return failed("%v", err)
	}
	var issuerData json.RawMessage
	if metaJSON, err := readSource(filepath.Join(site, e.name+".json")); err == nil {
		var meta certmagic.CertificateResource
		if json.Unmarshal(metaJSON, &meta) == nil {
			issuerData = meta.IssuerData
		}
	}
	if len(issuerData) == 0 {
		issuerData, _ = json.Marshal(importedMeta{ImportedFrom: "caddy " + site, ImportedAt: time.Now().UTC()})
	}
	// a certificate for several names is stored once per name, which is
	// how gatehouse looks certificates up
	var items []*importItem
	for _, name := range leafNames(pair.Leaf) {
		r := res
		r.Name = name
		it := &importItem{res: r, chainPEM: chainPEM, keyPEM: keyPEM, issuerData: issuerData}
		it.usable(pair.Leaf)
		items = append(items, it)
	}
	return items
}

// chainParses checks that every certificate after the leaf parses
// (tls.X509KeyPair parses the leaf only): a chain clients cannot read
// is not imported. Issuers are few, so each is parsed once
// (parsedIssuer's shared table).
func chainParses(pair tls.Certificate) error {
	for i, der := range pair.Certificate[1:] {
		if _, err := parsedIssuer(der); err != nil {
			return fmt.Errorf("certificate %d of the chain does not parse: %v", i+2, err)
		}
	}
	return nil
}

// usable checks that leaf serves the item's name now; if not, the item
// is final (skipped) and usable reports false.
func (it *importItem) usable(leaf *x509.Certificate) bool {
	name := it.res.Name
	it.res.Serial, it.res.NotAfter = leaf.SerialNumber.Text(16), leaf.NotAfter
	it.leafSerial = it.res.Serial
	if err := leaf.VerifyHostname(name); err != nil && !slices.Contains(leafNames(leaf), name) {
		it.res.Result, it.res.Reason, it.final = "skipped", fmt.Sprintf("the certificate does not cover %s", name), true
		return false
	}
	if time.Now().After(leaf.NotAfter) {
		it.res.Result, it.res.Reason, it.final = "skipped", fmt.Sprintf("expired %s", leaf.NotAfter.UTC().Format(time.RFC3339)), true
		return false
	}
	return true
}

// decide runs, in source order, the checks that need no storage access.
func (im *importer) decide(it *importItem) {
	if it.final {
		return
	}
	name := it.res.Name
	if im.done[name] {
		it.res.Result, it.res.Reason, it.final = "skipped", "imported from another entry already", true
		return
	}
	im.done[name] = true
	it.existing = im.held[safeKey(name)]
	switch e := im.table.Lookup(name); {
	case e == nil:
		it.res.Reason = "no route serves this name yet; it is served once one does"
	case e.Issuer != "acme":
		how := e.Issuer
		if how == "" {
			how = "passthrough: no certificate here"
		}
		it.routeSkip = fmt.Sprintf("route #%d gets its certificate another way (%s)", e.Index+1, how)
	}
}

// write checks what storage holds for the item's name and writes it
// (file store: into the staging folder; commit puts it in place).
func (im *importer) write(ctx context.Context, it *importItem) {
	if it.final {
		return
	}
	name := it.res.Name
	fail := func(format string, args ...any) {
		it.res.Result, it.res.Reason, it.final = "failed", fmt.Sprintf(format, args...), true
	}
	skip := func(format string, args ...any) {
		it.res.Result, it.res.Reason, it.final = "skipped", fmt.Sprintf(format, args...), true
	}
	if err := ctx.Err(); err != nil {
		fail("interrupted: %v", err)
		return
	}
	// the folders listed at the start: is a certificate in one?
	for _, k := range im.keys {
		if !slices.Contains(it.existing, k) {
			continue
		}
		prev, err := im.load(ctx, siteKey(k, name, ".crt"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			fail("reading gatehouse's storage: %v", err)
			return
		}
		serial := ""
		if chain, err := parsePEMChain(prev); err == nil {
			serial = chain[0].SerialNumber.Text(16)
		}
		if serial == it.leafSerial {
			skip("gatehouse already has a certificate for %s: this very one (serial %s, %s), from an earlier import; not replaced", name, serial, k)
		} else {
			skip("gatehouse already has a certificate for %s (serial %s, %s); not replaced", name, serial, k)
		}
		return
	}
	if it.routeSkip != "" {
		skip("%s", it.routeSkip)
		return
	}
	if im.opts.DryRun {
		it.res.Result = "would import"
		return
	}
	meta, err := json.MarshalIndent(certmagic.CertificateResource{SANs: []string{name}, IssuerData: it.issuerData}, "", "\t")
	if err != nil {
		fail("%v", err)
		return
	}
	target := it.res.IssuerKey
	assets := []struct {
		key string
		val []byte
	}{ // key first: a certificate in storage always has its key
		{siteKey(target, name, ".key"), it.keyPEM},
		{siteKey(target, name, ".crt"), it.chainPEM},
		{siteKey(target, name, ".json"), meta},
	}
	if im.files != nil {
		dir, err := im.stage(name)
		if err != nil {
			fail("staging: %v", err)
			return
		}
		for _, a := range assets {
			if err := writeNew(filepath.Join(dir, path.Base(a.key)), a.val); err != nil {
				fail("staging %s: %v", a.key, err)
				return
			}
		}
		it.staged = dir
		return
	}
	// another store: nothing written if gatehouse holds the name now
	sctx, cancel := context.WithTimeout(ctx, im.opts.OpTimeout)
	_, err = im.dst.Stat(sctx, assets[1].key)
	cancel()
	if err == nil {
		skip("gatehouse wrote a certificate for %s meanwhile; not replaced", name)
		return
	}
	if !errors.Is(err, fs.ErrNotExist) {
		fail("reading gatehouse's storage: %v", err)
		return
	}
	for _, a := range assets {
		sctx, cancel := context.WithTimeout(ctx, im.opts.OpTimeout)
		err := im.dst.Store(sctx, a.key, a.val)
		cancel()
		if err != nil {
			fail("writing %s: %v", a.key, err)
			return
		}
	}
	it.res.Result = "imported"
}

func (im *importer) load(ctx context.Context, key string) ([]byte, error) {
	if im.files != nil {
		return os.ReadFile(im.files.Filename(key))
	}
	lctx, cancel := context.WithTimeout(ctx, im.opts.OpTimeout)
	defer cancel()
	return im.dst.Load(lctx, key)
}

// stage makes a fresh folder for one name in this import's staging
// folder (created at the first one, beside certificates/ so that a
// rename moves it into place).
func (im *importer) stage(name string) (string, error) {
	im.mu.Lock()
	if im.staging == "" {
		if err := im.openStaging(); err != nil {
			im.mu.Unlock()
			return "", err
		}
	}
	im.seq++
	dir := filepath.Join(im.staging, fmt.Sprintf("%d", im.seq))
	im.mu.Unlock()
	return dir, os.Mkdir(dir, 0o700)
}

// stagingPrefix names the staging folders in the file store's root.
const stagingPrefix = ".gatehouse-import-"

// openStaging creates this import's staging folder, holding a lock on
// it for as long as the import runs, and removes the folders of
// imports that died (their lock is free).
func (im *importer) openStaging() error {
	root := im.files.Path
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	if old, err := filepath.Glob(filepath.Join(root, stagingPrefix+"*")); err == nil {
		for _, dir := range old {
			if f, err := os.Open(filepath.Join(dir, ".lock")); err == nil {
				if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
					_ = os.RemoveAll(dir) // its import is gone
				}
				f.Close()
			}
		}
	}
	dir, err := os.MkdirTemp(root, stagingPrefix)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err == nil {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return err
	}
	im.staging, im.lockFile = dir, f
	return nil
}

// commit puts a batch's staged names in place (file store): one flush
// makes them durable, then each folder is renamed into
// certificates/ISSUER/, and each issuer folder is synced once.
func (im *importer) commit(items []*importItem) {
	var staged []*importItem
	for _, it := range items {
		if it.staged != "" && !it.final {
			staged = append(staged, it)
		}
	}
	if len(staged) == 0 {
		return
	}
	importSyncs.Add(1)
	if err := flushStaged(im.staging, staged); err != nil {
		for _, it := range staged {
			it.res.Result, it.res.Reason = "failed", fmt.Sprintf("making the files durable: %v", err)
			_ = os.RemoveAll(it.staged)
		}
		return
	}
	if importHook != nil {
		importHook("flushed", 0)
	}
	touched := map[string]bool{}
	moved := 0
	for _, it := range staged {
		name := it.res.Name
		dst := im.files.Filename(sitePrefix(it.res.IssuerKey, name))
		parent := filepath.Dir(dst)
		if !im.parents[parent] {
			if err := os.MkdirAll(parent, 0o700); err != nil {
				it.res.Result, it.res.Reason = "failed", fmt.Sprintf("creating %s: %v", parent, err)
				_ = os.RemoveAll(it.staged)
				continue
			}
			im.parents[parent] = true
			touched[filepath.Dir(parent)] = true // certificates/ got a new issuer folder
			touched[filepath.Dir(filepath.Dir(parent))] = true
		}
		// never over anything: a name gatehouse wrote meanwhile (or
		// is writing) stays its own
		err := renameNoReplace(it.staged, dst)
		switch {
		case err == nil:
			it.res.Result = "imported"
			touched[parent] = true
			moved++
			if importHook != nil {
				importHook("renamed", moved)
			}
		case errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.ENOTDIR):
			it.res.Result, it.res.Reason = "skipped", fmt.Sprintf("storage has files for %s already (written meanwhile, or an incomplete certificate); not replaced", name)
			_ = os.RemoveAll(it.staged)
		default:
			it.res.Result, it.res.Reason = "failed", fmt.Sprintf("moving into place: %v", err)
			_ = os.RemoveAll(it.staged)
		}
	}
	for dir := range touched {
		importSyncs.Add(1)
		if err := syncDir(dir); err != nil {
			for _, it := range staged {
				if it.res.Result == "imported" && filepath.Dir(im.files.Filename(sitePrefix(it.res.IssuerKey, it.res.Name))) == dir {
					it.res.Reason = fmt.Sprintf("in place, but syncing %s failed (%v): a crash now could lose it", dir, err)
				}
			}
		}
	}
}

// syncDir makes a folder's entries durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// encodePair returns a parsed certificate and key as certmagic stores
// them: the chain in PEM, the key in PEM. The key is the block of
// keyPEM that tls.X509KeyPair verified (the first whose type ends in
// PRIVATE KEY), written as it was: certmagic's PEMDecodePrivateKey
// reads the same types and encodings, and marshalling the parsed key
// again costs a scalar multiplication per name (5% of an import's CPU).
func encodePair(pair tls.Certificate, keyPEM []byte) (chainPEM, key []byte, err error) {
	for _, der := range pair.Certificate {
		chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	for rest := keyPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type == "PRIVATE KEY" || strings.HasSuffix(b.Type, " PRIVATE KEY") {
			return chainPEM, pem.EncodeToMemory(&pem.Block{Type: b.Type, Bytes: b.Bytes}), nil
		}
	}
	key, err = certmagic.PEMEncodePrivateKey(pair.PrivateKey)
	return chainPEM, key, err
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

// sitePrefix is certmagic.StorageKeys.CertsSitePrefix without its
// per-call strings.Replacer (siteKey).
func sitePrefix(issuerKey, name string) string {
	return path.Dir(siteKey(issuerKey, name, ".crt"))
}
