package main

// Issue 15 point 3, `gatehouse import autocert|caddy` of N names
// (bench/import.sh): the many-names set (certs.go, ensureNames) is the
// source. Its storage/ tree is a certmagic file storage, which is what
// `import caddy` reads; for `import autocert` each name's key and
// certificate go into one file named after the name, key first, as
// autocert's DirCache writes them.

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
)

// importPrepare writes dir/autocert (n names), dir/gatehouse-names.toml
// (storage dir/store, one route listing every name) and prints the
// Caddy-layout source (the set's storage folder).
func importPrepare(cache string, n int, dir string) error {
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	s, err := loadNamesSet(cache, n, logf)
	if err != nil {
		return err
	}
	ac := filepath.Join(dir, "autocert")
	if err := os.MkdirAll(ac, 0o700); err != nil {
		return err
	}
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(s.names) {
					return
				}
				name := s.names[i]
				out := filepath.Join(ac, name)
				if _, err := os.Stat(out); err == nil {
					continue // made by an earlier run
				}
				key, err := os.ReadFile(s.keyPath(name))
				if err == nil {
					var crt []byte
					if crt, err = os.ReadFile(s.certPath(name)); err == nil {
						err = os.WriteFile(out, append(key, crt...), 0o600)
					}
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	cfg, err := namesConfig(dir, filepath.Join(dir, "store"), s.names, false, 9, 9, "127.0.0.1:9")
	if err != nil {
		return err
	}
	fmt.Printf("autocert=%s\ncaddy=%s\nconfig=%s\n", ac, filepath.Join(s.dir, "storage"), cfg)
	return nil
}
