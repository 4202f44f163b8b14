package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// The Go heap's soft limit from the container's memory limit.
//
// With GOGC=100 the heap may grow to twice its live data before the next
// collection; in a container with a memory limit that headroom is what
// gets the process OOM-killed: 100,000 loaded names are ~450 MB live and
// reached 1.3 GiB RSS (bench/README.md, many names). The runtime does not
// read the cgroup's memory limit by itself (it does read the CPU limit for
// GOMAXPROCS since Go 1.25), so unless GOMEMLIMIT is set gatehouse sets
// the soft limit (runtime/debug.SetMemoryLimit) to memLimitPercent % of the
// cgroup's limit: near it the collector runs more often instead of letting
// garbage pile up. The rest of the share is for what the Go heap does not
// count (goroutine stacks are counted; C, the binary, page tables and the
// kernel's socket buffers charged to the cgroup are not). It is a soft
// limit: live data above it is not refused, the process only spends more
// CPU on collection.
const memLimitPercent = 90

// cgroupUnlimited: cgroup v1 reports "no limit" as a page-rounded
// 2^63-1 (9223372036854771712); anything this large is no limit.
const cgroupUnlimited = int64(1) << 62

// cgroupMemoryLimit returns the memory limit of the cgroup a process is in
// and where it was read, from the cgroup file system mounted at fsRoot
// ("/sys/fs/cgroup") and that process's /proc/self/cgroup. The limit
// that applies is the smallest on the way from the process's cgroup up
// to the root, so every level is read (a container runtime may set it on
// a parent). cgroup v2 ("0::/path", memory.max, "max" = none) is tried
// first, then v1 ("N:...memory...:/path", memory/memory.limit_in_bytes).
// In a container with its own cgroup namespace the path is "/" and the
// files at fsRoot are the container's. ok is false when no limit is set
// or nothing could be read.
func cgroupMemoryLimit(fsRoot string, procSelfCgroup []byte) (limit int64, source string, ok bool) {
	var v2, v1 string
	haveV2, haveV1 := false, false
	sc := bufio.NewScanner(bytes.NewReader(procSelfCgroup))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path; the path may hold ':'
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2, haveV2 = parts[2], true
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				v1, haveV1 = parts[2], true
			}
		}
	}
	if haveV2 {
		if l, src, found := smallestLimit(fsRoot, v2, "memory.max"); found {
			return l, src, true
		}
	}
	if haveV1 {
		if l, src, found := smallestLimit(filepath.Join(fsRoot, "memory"), v1, "memory.limit_in_bytes"); found {
			return l, src, true
		}
	}
	// No /proc/self/cgroup line matched (or its path is not mounted
	// here): the files at the root of the mount, as a container with a
	// cgroup namespace shows them.
	if !haveV2 && !haveV1 {
		if l, err := readCgroupLimit(filepath.Join(fsRoot, "memory.max")); err == nil && l > 0 {
			return l, filepath.Join(fsRoot, "memory.max"), true
		}
		if l, err := readCgroupLimit(filepath.Join(fsRoot, "memory", "memory.limit_in_bytes")); err == nil && l > 0 {
			return l, filepath.Join(fsRoot, "memory", "memory.limit_in_bytes"), true
		}
	}
	return 0, "", false
}

// smallestLimit walks from dir/cg up to dir (bounded by the path's depth)
// and returns the smallest limit file holds on the way.
func smallestLimit(dir, cg, file string) (limit int64, source string, ok bool) {
	cg = path.Clean("/" + cg)
	for {
		p := filepath.Join(dir, filepath.FromSlash(cg), file)
		if l, err := readCgroupLimit(p); err == nil && l > 0 && (!ok || l < limit) {
			limit, source, ok = l, p, true
		}
		if cg == "/" {
			return limit, source, ok
		}
		cg = path.Dir(cg)
	}
}

// readCgroupLimit reads a memory.max or memory.limit_in_bytes file: a
// byte count, or "max" (v2) / a value near 2^63 (v1) for none, which is
// returned as 0.
func readCgroupLimit(p string) (int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 64) // a decimal int64 and a newline
	n, err := f.Read(buf)
	if n == 0 {
		if err == nil {
			err = errors.New("empty")
		}
		return 0, fmt.Errorf("%s: %w", p, err)
	}
	s := strings.TrimSpace(string(buf[:n]))
	if s == "max" {
		return 0, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%s: not a byte count: %q", p, s)
	}
	if v >= cgroupUnlimited {
		return 0, nil
	}
	return v, nil
}

// applyMemoryLimit sets the Go soft memory limit from the cgroup's limit
// unless GOMEMLIMIT is set (then the runtime already applied it and it is
// the operator's choice), and logs what it did. It returns the limit set,
// or 0 when it left the runtime's as it was.
func applyMemoryLimit(log *slog.Logger, getenv func(string) string, fsRoot, procSelfCgroup string) int64 {
	if v := getenv("GOMEMLIMIT"); v != "" {
		log.Info("memory limit from GOMEMLIMIT", "GOMEMLIMIT", v, "bytes", debug.SetMemoryLimit(-1))
		return 0
	}
	cg, _ := os.ReadFile(procSelfCgroup)
	limit, src, ok := cgroupMemoryLimit(fsRoot, cg)
	if !ok {
		log.Debug("no container memory limit found; Go memory limit not set (GOMEMLIMIT sets one)")
		return 0
	}
	soft := limit / 100 * memLimitPercent
	debug.SetMemoryLimit(soft)
	log.Info("Go memory limit set from the container's memory limit (GOMEMLIMIT overrides)",
		"limit_mib", soft>>20, "cgroup_limit_mib", limit>>20, "percent", memLimitPercent, "from", src)
	return soft
}
