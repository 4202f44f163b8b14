// Package etcdstore is a certmagic.Storage on etcd v3, so that several
// gatehouse instances share one set of certificates, ACME accounts and
// locks instead of each obtaining its own.
//
// It follows certmagic.FileStorage's semantics wherever the two could
// differ, so that certmagic behaves the same on both and a tree can be
// copied between them (see Copy):
//
//   - Keys are '/'-separated paths. Directories are implicit: a directory
//     exists while some key lies under it, exactly like a filesystem
//     directory that is removed when it becomes empty (and, like
//     certmagic's cleanup, nothing needs to remove it).
//   - A key cannot be both a file and a directory: Store refuses to write
//     "a/b" when "a" is a file, or "a" when "a/b" exists, because
//     FileStorage cannot represent that and a copy back to disk would fail.
//   - Load, List and Stat return errors that match fs.ErrNotExist for
//     missing keys; Delete of a missing key is not an error.
//   - List returns files and directories, in the order filepath.Walk
//     would visit them.
//   - Stat reports Size and a Modified time. etcd keeps no timestamps, so
//     Store records one in a side key (see the layout below); certmagic
//     uses it to pick the most recently used ACME account.
//
// Layout under Config.Prefix (default "gatehouse/"):
//
//	<prefix><key>                          the value, byte for byte
//	<prefix>.etcdstore/mtime/<key>         RFC 3339 time of the last Store
//	<prefix>.etcdstore/locks/<name>/<lease> lock waiters and holder
//
// The ".etcdstore" first component is reserved: keys inside it are
// refused by every method, so a Delete or a Copy can never touch locks or
// bookkeeping. Everything lives under the one prefix so that a single etcd
// RBAC grant on the prefix is enough.
//
// Every etcd request is bounded by Config.RequestTimeout (on top of the
// caller's context). The only open-ended wait is Lock waiting for another
// holder, which, like FileStorage, lasts until the lock is free or the
// caller's context ends; it is made of bounded steps.
package etcdstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Defaults for Config fields left zero.
const (
	// DefaultPrefix namespaces gatehouse's keys in a shared etcd.
	DefaultPrefix = "gatehouse/"

	// DefaultDialTimeout bounds New's first contact with the cluster
	// (connection, authentication and a probe read), so a wrong endpoint
	// fails start-up instead of hanging it.
	DefaultDialTimeout = 5 * time.Second

	// DefaultRequestTimeout bounds every single etcd request. Requests are
	// small (values are at most MaxValueSize), so anything slower means
	// the cluster is unreachable or has lost quorum; failing lets
	// certmagic retry later instead of wedging a goroutine.
	DefaultRequestTimeout = 10 * time.Second

	// DefaultLockTTL is the lease TTL behind every lock. A holder keeps
	// its lease alive (every TTL/3) while it runs; when it crashes or is
	// partitioned away, its lock is released by etcd at most LockTTL
	// later. 30 s rides out an etcd leader election or a short network
	// blip without losing a held lock, and costs a crashed holder's peers
	// at most 30 s, which is nothing next to certificate lifetimes.
	DefaultLockTTL = 30 * time.Second
)

// MaxValueSize is the largest value Store accepts: 1 MiB. etcd refuses
// requests over --max-request-bytes (1.5 MiB by default) with an opaque
// gRPC error, and large values bloat every watcher and snapshot;
// certmagic's values (certificates, keys, JSON metadata) are a few KiB.
const MaxValueSize = 1 << 20

// ErrValueTooLarge is matched (errors.Is) by Store's error for a value
// over MaxValueSize.
var ErrValueTooLarge = errors.New("value too large for etcd storage")

// ErrReservedKey is matched (errors.Is) by errors for keys inside the
// package's reserved ".etcdstore" directory.
var ErrReservedKey = errors.New("key is inside the reserved " + reservedDir + " directory")

const (
	reservedDir = ".etcdstore"
	// maxKeyDepth bounds the number of path components in a key: Store
	// checks every ancestor in one transaction, and etcd refuses
	// transactions of more than --max-txn-ops (128) operations.
	maxKeyDepth = 64
)

// listPageSize bounds each range response when listing.
const listPageSize = 1000

// Config configures New.
type Config struct {
	// Endpoints are the etcd client URLs, e.g. "https://10.0.0.1:2379".
	// Required.
	Endpoints []string
	// Prefix is prepended to every key; a trailing "/" is added when
	// missing. Default DefaultPrefix.
	Prefix string
	// Username and Password enable etcd authentication when Username is
	// set.
	Username, Password string
	// CACert is a PEM file of CAs that verify the etcd servers; empty
	// means the system roots (used when an endpoint is https://).
	CACert string
	// Cert and Key are PEM files of a client certificate, for clusters
	// with --client-cert-auth. Both or neither.
	Cert, Key string
	// DialTimeout bounds New's connection check. Default
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// RequestTimeout bounds every etcd request. Default
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// LockTTL is the lease TTL of locks: how long a crashed holder's lock
	// outlives it. Rounded up to whole seconds (etcd's unit); etcd itself
	// raises TTLs below its minimum (2 s with default election settings).
	// Default DefaultLockTTL.
	LockTTL time.Duration
	// Logger receives the etcd client's own logs. Default: discarded (the
	// client's errors reach callers through the returned errors anyway).
	Logger *zap.Logger
}

// Storage is a certmagic.Storage, certmagic.TryLocker and
// certmagic.LockLeaseRenewer on etcd. It is safe for concurrent use.
type Storage struct {
	client     *clientv3.Client
	prefix     string // data: prefix + key
	mtimeRoot  string // prefix + ".etcdstore/mtime/"
	lockRoot   string // prefix + ".etcdstore/locks/"
	reqTimeout time.Duration
	ttlSeconds int
	pageSize   int64  // listPageSize; smaller in a test to force paging
	endpoints  string // for String; never credentials

	// ctx lives until Close; lock sessions' keepalives hang off it.
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	gates  map[string]*gate     // per lock name: in-process exclusion
	held   map[string]*heldLock // per lock name: what Unlock releases
	closed bool
}

// New connects to etcd and checks, within DialTimeout, that the prefix
// can be read, so that a wrong endpoint, credential or certificate fails
// here with a clear error rather than at the first certificate operation.
func New(cfg Config) (*Storage, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcdstore: no endpoints configured")
	}
	if cfg.DialTimeout < 0 || cfg.RequestTimeout < 0 || cfg.LockTTL < 0 {
		return nil, errors.New("etcdstore: DialTimeout, RequestTimeout and LockTTL must not be negative")
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.LockTTL == 0 {
		cfg.LockTTL = DefaultLockTTL
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	tlsCfg, err := buildTLS(cfg)
	if err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = zap.NewNop()
	}

	client, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         tlsCfg,
		Username:    cfg.Username,
		Password:    cfg.Password,
		Logger:      logger,
	})
	if err != nil {
		// With Username set, the client authenticates here, within
		// DialTimeout.
		return nil, explainTimeout(fmt.Errorf("etcdstore: connecting to %s: %w", strings.Join(cfg.Endpoints, ","), err), cfg.Endpoints, tlsCfg)
	}
	// The client connects lazily (since etcd client 3.6), so probe: a
	// count-only read of the prefix also proves read permission on it.
	probeCtx, cancelProbe := context.WithTimeout(context.Background(), cfg.DialTimeout)
	_, err = client.Get(probeCtx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancelProbe()
	if err != nil {
		client.Close()
		return nil, explainTimeout(fmt.Errorf("etcdstore: reading %q from %s within %s: %w", prefix, strings.Join(cfg.Endpoints, ","), cfg.DialTimeout, err), cfg.Endpoints, tlsCfg)
	}

	ttl := int((cfg.LockTTL + time.Second - 1) / time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	return &Storage{
		client:     client,
		prefix:     prefix,
		mtimeRoot:  prefix + reservedDir + "/mtime/",
		lockRoot:   prefix + reservedDir + "/locks/",
		reqTimeout: cfg.RequestTimeout,
		ttlSeconds: ttl,
		pageSize:   listPageSize,
		endpoints:  strings.Join(cfg.Endpoints, ","),
		ctx:        ctx,
		cancel:     cancel,
		gates:      make(map[string]*gate),
		held:       make(map[string]*heldLock),
	}, nil
}

// buildTLS turns the file names in cfg into a client TLS config; nil
// means plaintext.
func buildTLS(cfg Config) (*tls.Config, error) {
	https := false
	for _, ep := range cfg.Endpoints {
		if strings.HasPrefix(ep, "https://") {
			https = true
		}
	}
	if cfg.CACert == "" && cfg.Cert == "" && cfg.Key == "" {
		if https {
			return &tls.Config{MinVersion: tls.VersionTLS12}, nil
		}
		return nil, nil
	}
	// TLS files with an http:// endpoint would either be ignored or send
	// credentials in the clear, depending on client version: refuse.
	for _, ep := range cfg.Endpoints {
		if strings.HasPrefix(ep, "http://") {
			return nil, fmt.Errorf("etcdstore: endpoint %q is plain http but TLS files are configured; use https://", ep)
		}
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return nil, fmt.Errorf("etcdstore: reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcdstore: CA file %s holds no PEM certificate", cfg.CACert)
		}
		tc.RootCAs = pool
	}
	if (cfg.Cert == "") != (cfg.Key == "") {
		return nil, errors.New("etcdstore: Cert and Key must be set together")
	}
	if cfg.Cert != "" {
		pair, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("etcdstore: loading client certificate %s / %s: %w", cfg.Cert, cfg.Key, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

// explainTimeout adds diagnose's findings to a timeout: gRPC waits for a
// usable connection and then reports only the deadline, hiding why the
// connection failed.
func explainTimeout(err error, endpoints []string, tc *tls.Config) error {
	if !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w (%s)", err, diagnose(endpoints, tc))
}

// diagnose dials each endpoint itself, with a short bound, to explain a
// connection that gRPC only reports as a timeout (nothing listening, TLS
// handshake refused, server certificate not trusted, client certificate
// rejected).
func diagnose(endpoints []string, tc *tls.Config) string {
	const bound = time.Second
	var out []string
	for _, ep := range endpoints {
		addr := ep
		if i := strings.Index(addr, "://"); i >= 0 {
			addr = addr[i+3:]
		}
		addr = strings.TrimSuffix(addr, "/")
		err := func() error {
			conn, err := net.DialTimeout("tcp", addr, bound)
			if err != nil {
				return err
			}
			defer conn.Close()
			if tc == nil {
				return nil
			}
			c := tc.Clone()
			if c.ServerName == "" {
				c.ServerName, _, _ = net.SplitHostPort(addr)
			}
			c.NextProtos = []string{"h2"}
			tconn := tls.Client(conn, c)
			tconn.SetDeadline(time.Now().Add(bound))
			if err := tconn.Handshake(); err != nil {
				return err
			}
			// With TLS 1.3 a rejected client certificate shows up only on
			// the first read after the handshake.
			tconn.SetDeadline(time.Now().Add(200 * time.Millisecond))
			_, err = tconn.Read(make([]byte, 1))
			var ne net.Error
			if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
				return err
			}
			return nil
		}()
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", ep, err))
		} else {
			out = append(out, ep+": connects, but etcd did not answer")
		}
	}
	return strings.Join(out, "; ")
}

// Close releases the locks this Storage still holds (revoking their
// leases, so peers need not wait for the TTL) and closes the client.
func (s *Storage) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	held := s.held
	s.held = make(map[string]*heldLock)
	s.mu.Unlock()

	// Release in parallel, so Close takes at most one RequestTimeout even
	// with etcd unreachable.
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		errs  []error
	)
	for name, h := range held {
		wg.Go(func() {
			if err := s.endSession(h.session); err != nil {
				errMu.Lock()
				errs = append(errs, fmt.Errorf("etcdstore: close: releasing lock %q (it expires within %ds): %w", name, s.ttlSeconds, err))
				errMu.Unlock()
			}
		})
	}
	wg.Wait()
	s.cancel()
	if err := s.client.Close(); err != nil && !errors.Is(err, context.Canceled) {
		errs = append(errs, fmt.Errorf("etcdstore: close: %w", err))
	}
	return errors.Join(errs...)
}

// String identifies the storage in certmagic's logs (no credentials).
func (s *Storage) String() string {
	return "etcdstore:" + s.endpoints + "/" + s.prefix
}

// opCtx bounds one etcd request.
func (s *Storage) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.reqTimeout)
}

// cleanKey normalises key like FileStorage's filepath.Join does (extra,
// leading and trailing slashes, "." components) and returns "" for the
// root. It refuses ".." rather than resolve it, since path.Clean would
// silently turn "../x" into "x", and refuses the reserved directory.
func cleanKey(key string) (string, error) {
	for _, c := range strings.Split(key, "/") {
		if c == ".." {
			return "", fmt.Errorf("key %q: '..' is not allowed", key)
		}
	}
	k := strings.Trim(path.Clean("/"+key), "/")
	first, _, _ := strings.Cut(k, "/")
	if first == reservedDir {
		return "", fmt.Errorf("key %q: %w", key, ErrReservedKey)
	}
	if strings.Count(k, "/")+1 > maxKeyDepth {
		return "", fmt.Errorf("key %q: more than %d path components", key, maxKeyDepth)
	}
	return k, nil
}

// notExist wraps fs.ErrNotExist with the operation and key.
func notExist(op, key string) error {
	return fmt.Errorf("etcdstore: %s %q: %w", op, key, fs.ErrNotExist)
}

// Store puts value at key, refusing values over MaxValueSize before
// sending them and refusing a key that is, or lies under, an existing
// key of the other kind (file vs directory), in one atomic transaction.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	k, err := cleanKey(key)
	if err != nil {
		return fmt.Errorf("etcdstore: store: %w", err)
	}
	if k == "" {
		return fmt.Errorf("etcdstore: store %q: cannot store a value at the storage root", key)
	}
	if len(value) > MaxValueSize {
		return fmt.Errorf("etcdstore: store %q: value is %d bytes, over the %d-byte limit: %w", key, len(value), MaxValueSize, ErrValueTooLarge)
	}

	var cmps []clientv3.Cmp
	var explain []clientv3.Op
	for i := 0; i < len(k); i++ {
		if k[i] == '/' {
			anc := s.prefix + k[:i]
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(anc), "=", 0))
			explain = append(explain, clientv3.OpGet(anc, clientv3.WithKeysOnly()))
		}
	}
	dir := s.prefix + k + "/"
	cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(dir), "=", 0).WithPrefix())
	explain = append(explain, clientv3.OpGet(dir, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1)))

	now := time.Now().UTC().Format(time.RFC3339Nano)
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.client.Txn(octx).If(cmps...).Then(
		clientv3.OpPut(s.prefix+k, string(value)),
		clientv3.OpPut(s.mtimeRoot+k, now),
	).Else(explain...).Commit()
	if err != nil {
		return fmt.Errorf("etcdstore: store %q: %w", key, err)
	}
	if !resp.Succeeded {
		for _, r := range resp.Responses {
			if kvs := r.GetResponseRange().GetKvs(); len(kvs) > 0 {
				other := strings.TrimPrefix(string(kvs[0].Key), s.prefix)
				if strings.HasPrefix(other, k+"/") {
					return fmt.Errorf("etcdstore: store %q: key is a directory (%q exists under it)", key, other)
				}
				return fmt.Errorf("etcdstore: store %q: %q is a file, not a directory", key, other)
			}
		}
		return fmt.Errorf("etcdstore: store %q: conflicting key changed concurrently; retry", key)
	}
	return nil
}

// Load returns the value at key, or an error matching fs.ErrNotExist.
// A directory is reported as not existing, since it has no value.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	k, err := cleanKey(key)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: load: %w", err)
	}
	if k == "" {
		return nil, notExist("load", key)
	}
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.client.Get(octx, s.prefix+k)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: load %q: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, notExist("load", key)
	}
	v := resp.Kvs[0].Value
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

// Delete removes key and, if it is a directory, everything under it, in
// one transaction. A missing key is not an error. Deleting the storage
// root is refused: on a shared cluster it would wipe every instance's
// certificates, and no certmagic operation needs it.
func (s *Storage) Delete(ctx context.Context, key string) error {
	k, err := cleanKey(key)
	if err != nil {
		return fmt.Errorf("etcdstore: delete: %w", err)
	}
	if k == "" {
		return fmt.Errorf("etcdstore: delete %q: refusing to delete the whole storage root", key)
	}
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	_, err = s.client.Txn(octx).Then(
		clientv3.OpDelete(s.prefix+k),
		clientv3.OpDelete(s.prefix+k+"/", clientv3.WithPrefix()),
		clientv3.OpDelete(s.mtimeRoot+k),
		clientv3.OpDelete(s.mtimeRoot+k+"/", clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return fmt.Errorf("etcdstore: delete %q: %w", key, err)
	}
	return nil
}

// Exists reports whether key is a file or a non-empty directory. Errors
// (including an unreachable cluster) report false, as the interface asks.
// The root always exists.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	k, err := cleanKey(key)
	if err != nil {
		return false
	}
	if k == "" {
		return true
	}
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.client.Txn(octx).Then(
		clientv3.OpGet(s.prefix+k, clientv3.WithCountOnly()),
		clientv3.OpGet(s.prefix+k+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1)),
	).Commit()
	if err != nil {
		return false
	}
	return resp.Responses[0].GetResponseRange().GetCount() > 0 ||
		len(resp.Responses[1].GetResponseRange().GetKvs()) > 0
}

// Stat describes key. Files get their size and the time of their last
// Store; directories get IsTerminal=false and the time of the most recent
// Store anywhere under them (a filesystem directory's mtime only moves for
// direct children; for certmagic's account directories the two agree).
// The root is always a directory.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	k, err := cleanKey(key)
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("etcdstore: stat: %w", err)
	}
	dataDir, mtimeDir := s.prefix+k+"/", s.mtimeRoot+k+"/"
	if k == "" {
		dataDir, mtimeDir = s.prefix, s.mtimeRoot
	}
	octx, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.client.Txn(octx).Then(
		clientv3.OpGet(s.prefix+k),
		clientv3.OpGet(dataDir, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(1)),
		clientv3.OpGet(s.mtimeRoot+k),
		// The newest mtime key under the directory: highest mod revision.
		clientv3.OpGet(mtimeDir, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByModRevision, clientv3.SortDescend), clientv3.WithLimit(1)),
	).Commit()
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("etcdstore: stat %q: %w", key, err)
	}
	file := resp.Responses[0].GetResponseRange().GetKvs()
	under := resp.Responses[1].GetResponseRange().GetKvs()
	fileTime := resp.Responses[2].GetResponseRange().GetKvs()
	dirTime := resp.Responses[3].GetResponseRange().GetKvs()
	switch {
	case k != "" && len(file) > 0:
		return certmagic.KeyInfo{Key: key, Size: int64(len(file[0].Value)), Modified: parseTime(fileTime), IsTerminal: true}, nil
	case k == "" || len(under) > 0:
		return certmagic.KeyInfo{Key: key, Modified: parseTime(dirTime), IsTerminal: false}, nil
	default:
		return certmagic.KeyInfo{}, notExist("stat", key)
	}
}

// parseTime reads an mtime side key; keys written by other tools have
// none, which yields the zero time (KeyInfo.Modified is optional).
func parseTime(kvs []*mvccpb.KeyValue) time.Time {
	if len(kvs) == 0 {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, string(kvs[0].Value))
	if err != nil {
		return time.Time{}
	}
	return t
}

// List returns the files and directories under dir (its direct children,
// or with recursive all descendants), as full keys in filepath.Walk order.
// A missing directory is an error matching fs.ErrNotExist; a file has no
// children. The listing is one consistent snapshot even when paged.
func (s *Storage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	k, err := cleanKey(dir)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: list: %w", err)
	}
	start := s.prefix
	if k != "" {
		start = s.prefix + k + "/"
	}
	ranges := [][2]string{{start, clientv3.GetPrefixRangeEnd(start)}}
	if k == "" {
		// Skip the reserved directory "<prefix>.etcdstore/" ('0' follows
		// '/'), whose keys are about as many as the data keys.
		reserved := s.prefix + reservedDir + "/"
		ranges = [][2]string{{start, reserved}, {s.prefix + reservedDir + "0", ranges[0][1]}}
	}
	seen := make(map[string]struct{})
	err = s.scanKeys(ctx, ranges, func(full string) {
		rel := strings.TrimPrefix(full, start)
		if !recursive {
			first, _, _ := strings.Cut(rel, "/")
			seen[path.Join(k, first)] = struct{}{}
			return
		}
		for i := 0; i < len(rel); i++ {
			if rel[i] == '/' {
				seen[path.Join(k, rel[:i])] = struct{}{}
			}
		}
		seen[path.Join(k, rel)] = struct{}{}
	})
	if err != nil {
		return nil, fmt.Errorf("etcdstore: list %q: %w", dir, err)
	}
	if len(seen) == 0 && k != "" {
		// Nothing under it: a file (no children) or nothing at all.
		octx, cancel := s.opCtx(ctx)
		defer cancel()
		resp, err := s.client.Get(octx, s.prefix+k, clientv3.WithCountOnly())
		if err != nil {
			return nil, fmt.Errorf("etcdstore: list %q: %w", dir, err)
		}
		if resp.Count == 0 {
			return nil, notExist("list", dir)
		}
		return nil, nil
	}
	keys := make([]string, 0, len(seen))
	for key := range seen {
		keys = append(keys, key)
	}
	slices.SortFunc(keys, walkOrder)
	return keys, nil
}

// scanKeys calls fn for every etcd key in the [start, end) ranges, in
// pages of s.pageSize, each page a bounded request pinned to the first
// page's revision so the whole scan is one snapshot.
func (s *Storage) scanKeys(ctx context.Context, ranges [][2]string, fn func(string)) error {
	var rev int64
	for _, r := range ranges {
		start, end := r[0], r[1]
		for {
			opts := []clientv3.OpOption{
				clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(s.pageSize),
				clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend),
			}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			octx, cancel := s.opCtx(ctx)
			resp, err := s.client.Get(octx, start, opts...)
			cancel()
			if err != nil {
				return err
			}
			if rev == 0 {
				rev = resp.Header.Revision
			}
			for _, kv := range resp.Kvs {
				fn(string(kv.Key))
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			// Each page starts strictly after the last key seen, so the
			// loop ends after at most keys/pageSize + 1 requests.
			start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
	return nil
}

// walkOrder orders keys as filepath.Walk visits paths: component by
// component, a directory's contents right after it ("a", "a/b", "a-c"),
// which is byte order with '/' sorting first.
func walkOrder(a, b string) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		ca, cb := a[i], b[i]
		switch {
		case ca == cb:
			continue
		case ca == '/':
			return -1
		case cb == '/':
			return 1
		case ca < cb:
			return -1
		default:
			return 1
		}
	}
	return len(a) - len(b)
}

// Interface guards: certmagic uses the optional interfaces when present.
var (
	_ certmagic.Storage          = (*Storage)(nil)
	_ certmagic.TryLocker        = (*Storage)(nil)
	_ certmagic.LockLeaseRenewer = (*Storage)(nil)
)
