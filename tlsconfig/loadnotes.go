package tlsconfig

import (
	"context"
	"errors"
	"hash"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"strconv"
	"sync"
	"time"
)

// The store's fingerprint of a certificate loaded from the lazy index.
//
// loadOne records, beside the certificate it loads, the fingerprint of
// the name's certificate files in the store (storesync.go: size and
// modification time of each issuer's .crt), so that the sync pass need
// not read them again to find that the cached certificate is the
// stored one. It used to Stat each .crt before certmagic read it: one
// more file-system lookup per first handshake, ~7% of a load's CPU
// (BenchmarkFirstLoad, bench/README.md "Many names"). On the file store
// it now notes the size and modification time of the open file certmagic
// reads the .crt from (the fstat os.ReadFile does anyway): the same
// figures Stat gives, taken from the very bytes that were loaded.
//
// The notes ride in the load's context, which certmagic hands to every
// Load it makes through rollbackSafe (the storage its configs use); a
// Load without them, or of another key, passes through as before. When
// the load did not read every issuer's .crt (a missing key file stops
// certmagic before it, or LoadFirstUsableCert skipped an issuer), no
// fingerprint is recorded and the sync pass reads the files as it does
// for any name it has not seen.

type readNotesKey struct{}

// readNotes is the fingerprint being taken by one load.
type readNotes struct {
	files interface{ Filename(key string) string } // the file store

	mu    sync.Mutex
	keys  []string // each issuer's .crt key (certKeys)
	notes []fileNote
}

type fileNote struct {
	seen, exists bool
	size         int64
	mod          time.Time
}

// loadNotes returns ctx carrying notes for keys, or ctx and nil when
// the store is not one of files (the caller Stats them instead).
func (m *Manager) loadNotes(ctx context.Context, keys []string) (context.Context, *readNotes) {
	fst, ok := m.storage.(interface{ Filename(key string) string })
	if !ok {
		return ctx, nil
	}
	n := &readNotes{files: fst, keys: keys, notes: make([]fileNote, len(keys))}
	return context.WithValue(ctx, readNotesKey{}, n), n
}

// Load is the store's Load; a .crt read for a load from the lazy index
// notes its size and modification time on the way.
func (r *rollbackSafe) Load(ctx context.Context, key string) ([]byte, error) {
	if n, _ := ctx.Value(readNotesKey{}).(*readNotes); n != nil {
		for i, k := range n.keys {
			if k == key {
				return n.read(i, key)
			}
		}
	}
	return r.Storage.Load(ctx, key)
}

// read is certmagic's FileStorage.Load (os.ReadFile: open, fstat, read
// to EOF), keeping what fstat said.
func (n *readNotes) read(i int, key string) ([]byte, error) {
	f, err := os.Open(n.files.Filename(key))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			n.note(i, fileNote{seen: true})
		}
		return nil, err
	}
	defer f.Close()
	// as os.ReadFile: room for the whole file and one byte more, so
	// that a file of the size fstat gave reads in one call and EOF
	info, statErr := f.Stat()
	size := int64(512)
	if statErr == nil {
		size = min(max(info.Size(), 0), 1<<20) + 1
	}
	data := make([]byte, 0, size)
	for {
		c, err := f.Read(data[len(data):cap(data)])
		data = data[:len(data)+c]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if len(data) == cap(data) { // grew since fstat
			data = append(data, 0)[:len(data)]
		}
	}
	if statErr == nil { // else not noted: no fingerprint from this load
		n.note(i, fileNote{seen: true, exists: true, size: info.Size(), mod: info.ModTime()})
	}
	return data, nil
}

func (n *readNotes) note(i int, fn fileNote) {
	n.mu.Lock()
	n.notes[i] = fn
	n.mu.Unlock()
}

// fingerprint is storeFingerprint's sum and keys for what the load
// read; ok false when it did not read every key.
func (n *readNotes) fingerprint() (sum uint64, keys []string, ok bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	fp := fnv.New64a()
	var buf []byte
	for i, key := range n.keys {
		fn := n.notes[i]
		if !fn.seen {
			return 0, nil, false
		}
		if !fn.exists {
			continue
		}
		buf = fingerprintLine(fp, buf, key, fn.size, fn.mod)
		keys = append(keys, key)
	}
	return fp.Sum64(), keys, true
}

// fingerprintLine adds one stored file to a fingerprint (buf is scratch
// space, returned for reuse).
func fingerprintLine(fp hash.Hash64, buf []byte, key string, size int64, mod time.Time) []byte {
	buf = append(buf[:0], key...)
	buf = strconv.AppendInt(append(buf, ' '), size, 10)
	buf = strconv.AppendInt(append(buf, ' '), mod.UnixNano(), 10)
	fp.Write(append(buf, '\n'))
	return buf
}
