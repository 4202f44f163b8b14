package tlsconfig

import (
	"os"

	"golang.org/x/sys/unix"
)

// flushStaged makes the staged files durable with one syncfs(2) of the
// file system holding them, instead of an fsync per file (three per
// name).
func flushStaged(staging string, _ []*importItem) error {
	f, err := os.Open(staging)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// renameNoReplace moves a staged folder into place with
// renameat2(RENAME_NOREPLACE): the kernel refuses (EEXIST) when
// anything is at dst, even an empty folder a running gatehouse has just
// made for the name, in the same call that checks it (os.Rename looks
// with an lstat first, then renames: a folder made in between, empty,
// would be replaced). File systems without the flag (EINVAL) get
// os.Rename.
func renameNoReplace(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if err == unix.EINVAL || err == unix.ENOSYS {
		return os.Rename(src, dst)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: src, New: dst, Err: err}
	}
	return nil
}
