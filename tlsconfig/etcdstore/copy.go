package etcdstore

import (
	"bytes"
	"context"
	"fmt"

	"github.com/caddyserver/certmagic"
)

// Copy copies every file (terminal key) of from into to, byte for byte,
// and returns how many it copied. It backs `gatehouse storage copy`
// between a directory (certmagic.FileStorage) and etcd in either
// direction.
//
// Existing keys in to are overwritten; nothing is ever deleted, on either
// side, so a failed copy can simply be re-run. It stops at the first error,
// which names the key. Each value is read back from to and compared, so a
// reported success means to holds the same bytes. Keys are copied as they
// are, including a FileStorage's own lock files under "locks/" if the
// source directory has any: they are ordinary keys to the destination and
// harmless there.
//
// Copy takes no locks: stop the instances writing to from, or accept that
// a certificate renewed during the copy may be copied in its old version.
func Copy(ctx context.Context, from, to certmagic.Storage) (n int, err error) {
	keys, err := from.List(ctx, "", true)
	if err != nil {
		return 0, fmt.Errorf("copy: listing source: %w", err)
	}
	for _, key := range keys {
		if err := ctx.Err(); err != nil {
			return n, fmt.Errorf("copy: after %d keys: %w", n, err)
		}
		info, err := from.Stat(ctx, key)
		if err != nil {
			return n, fmt.Errorf("copy %q: stat source: %w", key, err)
		}
		if !info.IsTerminal {
			continue // directories are implied by their files
		}
		value, err := from.Load(ctx, key)
		if err != nil {
			return n, fmt.Errorf("copy %q: load source: %w", key, err)
		}
		if err := to.Store(ctx, key, value); err != nil {
			return n, fmt.Errorf("copy %q: store destination: %w", key, err)
		}
		back, err := to.Load(ctx, key)
		if err != nil {
			return n, fmt.Errorf("copy %q: read back destination: %w", key, err)
		}
		if !bytes.Equal(back, value) {
			return n, fmt.Errorf("copy %q: destination holds %d bytes that differ from the source's %d", key, len(back), len(value))
		}
		n++
	}
	return n, nil
}
