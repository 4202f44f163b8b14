package etcdstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/caddyserver/certmagic"
)

// Copy copies every file (terminal key) of from into to, byte for byte,
// and returns how many it copied. Existing keys in to are overwritten:
// it is CopyTree with Overwrite set.
func Copy(ctx context.Context, from, to certmagic.Storage) (n int, err error) {
	st, err := CopyTree(ctx, from, to, CopyOptions{Overwrite: true})
	return st.Copied + st.Same, err
}

// CopyOptions tune CopyTree.
type CopyOptions struct {
	// Overwrite lets a key that exists in the destination with other
	// bytes be replaced. Without it CopyTree refuses, before writing
	// anything, and lists the differing keys: copying an old directory
	// into a store that replicas already use would replace their newer
	// certificates with older ones.
	Overwrite bool
	// Skip, when set, leaves out the keys it returns true for.
	Skip func(key string) bool
}

// CopyStats counts what CopyTree did.
type CopyStats struct {
	Copied  int // written to the destination
	Same    int // already in the destination with the same bytes
	Skipped int // left out by CopyOptions.Skip
}

// ErrConflict is matched (errors.Is) by CopyTree's error when keys differ
// in the destination and CopyOptions.Overwrite is not set.
var ErrConflict = errors.New("keys exist in the destination with different contents")

// CopyTree copies every file (terminal key) of from into to, byte for
// byte. It backs `gatehouse storage copy` between a directory
// (certmagic.FileStorage) and etcd in either direction.
//
// Nothing is ever deleted, on either side, so a failed copy can simply be
// re-run. It stops at the first error, which names the key. Each value
// written is read back and compared, so a reported success means to holds
// the same bytes.
//
// CopyTree takes no locks: stop the instances writing to from, or accept
// that a certificate renewed during the copy may be copied in its old
// version.
func CopyTree(ctx context.Context, from, to certmagic.Storage, opts CopyOptions) (CopyStats, error) {
	var st CopyStats
	keys, err := from.List(ctx, "", true)
	if err != nil {
		return st, fmt.Errorf("copy: listing source: %w", err)
	}
	// Two passes, so that a conflict stops the copy before anything is
	// written, without holding every value in memory.
	type item struct {
		key  string
		same bool
	}
	var items []item
	var conflicts []string
	for _, key := range keys {
		if err := ctx.Err(); err != nil {
			return st, fmt.Errorf("copy: %w", err)
		}
		if opts.Skip != nil && opts.Skip(key) {
			info, err := from.Stat(ctx, key)
			if err == nil && info.IsTerminal {
				st.Skipped++
			}
			continue
		}
		info, err := from.Stat(ctx, key)
		if err != nil {
			return st, fmt.Errorf("copy %q: stat source: %w", key, err)
		}
		if !info.IsTerminal {
			continue // directories are implied by their files
		}
		value, err := from.Load(ctx, key)
		if err != nil {
			return st, fmt.Errorf("copy %q: load source: %w", key, err)
		}
		it := item{key: key}
		existing, err := to.Load(ctx, key)
		switch {
		case err == nil && bytes.Equal(existing, value):
			it.same = true
		case err == nil:
			conflicts = append(conflicts, key)
		case !errors.Is(err, fs.ErrNotExist):
			return st, fmt.Errorf("copy %q: reading destination: %w", key, err)
		}
		items = append(items, it)
	}
	if len(conflicts) > 0 && !opts.Overwrite {
		show := conflicts
		if len(show) > 10 {
			show = show[:10]
		}
		return st, fmt.Errorf("copy: %d key(s): %w (nothing was written): %s%s", len(conflicts), ErrConflict,
			strings.Join(show, ", "), map[bool]string{true: ", ...", false: ""}[len(conflicts) > len(show)])
	}
	for _, it := range items {
		if it.same {
			st.Same++
			continue
		}
		if err := ctx.Err(); err != nil {
			return st, fmt.Errorf("copy: after %d keys: %w", st.Copied, err)
		}
		value, err := from.Load(ctx, it.key)
		if err != nil {
			return st, fmt.Errorf("copy %q: load source: %w", it.key, err)
		}
		if err := to.Store(ctx, it.key, value); err != nil {
			return st, fmt.Errorf("copy %q: store destination: %w", it.key, err)
		}
		back, err := to.Load(ctx, it.key)
		if err != nil {
			return st, fmt.Errorf("copy %q: read back destination: %w", it.key, err)
		}
		if !bytes.Equal(back, value) {
			return st, fmt.Errorf("copy %q: destination holds %d bytes that differ from the source's %d", it.key, len(back), len(value))
		}
		st.Copied++
	}
	return st, nil
}
