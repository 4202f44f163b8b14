//go:build !linux

package tlsconfig

import (
	"os"
	"path/filepath"
)

// flushStaged makes the staged files durable: without syncfs(2), an
// fsync per file and folder.
func flushStaged(staging string, items []*importItem) error {
	for _, it := range items {
		ents, err := os.ReadDir(it.staged)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := syncFile(filepath.Join(it.staged, e.Name())); err != nil {
				return err
			}
		}
		if err := syncFile(it.staged); err != nil {
			return err
		}
	}
	return syncFile(staging)
}

func syncFile(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// renameNoReplace: os.Rename, which refuses to replace a folder.
func renameNoReplace(src, dst string) error {
	return os.Rename(src, dst)
}
