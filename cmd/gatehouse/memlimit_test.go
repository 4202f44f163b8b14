package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

// writeFiles writes name → content under root (directories made).
func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCgroupMemoryLimit(t *testing.T) {
	const gib = int64(1) << 30
	cases := []struct {
		name   string
		files  map[string]string
		cgroup string
		want   int64 // 0: no limit
		from   string
	}{
		{name: "v2 namespaced container",
			files:  map[string]string{"memory.max": "1073741824\n"},
			cgroup: "0::/\n", want: gib, from: "memory.max"},
		{name: "v2 max is no limit",
			files:  map[string]string{"memory.max": "max\n"},
			cgroup: "0::/\n"},
		{name: "v2 nested: the parent's smaller limit applies",
			files: map[string]string{
				"memory.max":                  "max\n",
				"kubepods/memory.max":         "2147483648\n",
				"kubepods/pod1/memory.max":    "1073741824\n",
				"kubepods/pod1/c1/memory.max": "max\n",
			},
			cgroup: "0::/kubepods/pod1/c1\n", want: gib, from: "kubepods/pod1/memory.max"},
		{name: "v2 leaf smaller than parent",
			files: map[string]string{
				"a/memory.max":   "2147483648\n",
				"a/b/memory.max": "536870912\n",
			},
			cgroup: "0::/a/b\n", want: gib / 2, from: "a/b/memory.max"},
		{name: "v1 memory controller",
			files: map[string]string{
				"memory/memory.limit_in_bytes":            "9223372036854771712\n",
				"memory/docker/abc/memory.limit_in_bytes": "805306368\n",
			},
			cgroup: "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n",
			want:   768 << 20, from: "memory/docker/abc/memory.limit_in_bytes"},
		{name: "v1 unlimited",
			files:  map[string]string{"memory/x/memory.limit_in_bytes": "9223372036854771712\n"},
			cgroup: "4:memory:/x\n"},
		{name: "v1 controller listed with others, path not mounted: the root's",
			files:  map[string]string{"memory/memory.limit_in_bytes": "536870912\n"},
			cgroup: "3:cpu,memory:/host/path\n", want: gib / 2, from: "memory/memory.limit_in_bytes"},
		{name: "hybrid: v2 line without a limit, v1 has one",
			files: map[string]string{
				"memory.max":                   "max\n",
				"memory/memory.limit_in_bytes": "1073741824\n",
			},
			cgroup: "4:memory:/\n0::/\n", want: gib, from: "memory/memory.limit_in_bytes"},
		{name: "no /proc/self/cgroup: the root files",
			files: map[string]string{"memory.max": "268435456\n"},
			want:  256 << 20, from: "memory.max"},
		{name: "nothing mounted",
			cgroup: "0::/\n"},
		{name: "garbage is no limit",
			files:  map[string]string{"memory.max": "lots\n"},
			cgroup: "0::/\n"},
		{name: "negative is no limit",
			files:  map[string]string{"memory.max": "-1\n"},
			cgroup: "0::/\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			writeFiles(t, root, c.files)
			got, src, ok := cgroupMemoryLimit(root, []byte(c.cgroup))
			if c.want == 0 {
				if ok {
					t.Fatalf("limit %d from %s, want none", got, src)
				}
				return
			}
			if !ok || got != c.want {
				t.Fatalf("limit %d (ok %v), want %d", got, ok, c.want)
			}
			if want := filepath.Join(root, filepath.FromSlash(c.from)); src != want {
				t.Fatalf("from %s, want %s", src, want)
			}
		})
	}
}

// TestApplyMemoryLimit: with GOMEMLIMIT set the runtime's limit is left
// alone whatever the cgroup says; without it the limit becomes 90% of
// the cgroup's. The real runtime limit is read back (debug.SetMemoryLimit(-1)).
func TestApplyMemoryLimit(t *testing.T) {
	orig := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(orig) })
	root := t.TempDir()
	writeFiles(t, root, map[string]string{"memory.max": "1073741824\n", "self-cgroup": "0::/\n"})
	cg := filepath.Join(root, "self-cgroup")

	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	// hands off: GOMEMLIMIT set (any value, "off" included)
	const sentinel = int64(7 << 40)
	debug.SetMemoryLimit(sentinel)
	for _, v := range []string{"540MiB", "off"} {
		env := func(k string) string {
			if k == "GOMEMLIMIT" {
				return v
			}
			return ""
		}
		if got := applyMemoryLimit(log, env, root, cg); got != 0 {
			t.Fatalf("GOMEMLIMIT=%s: set %d, want hands off", v, got)
		}
		if got := debug.SetMemoryLimit(-1); got != sentinel {
			t.Fatalf("GOMEMLIMIT=%s: runtime limit %d, want it left at %d", v, got, sentinel)
		}
	}
	if !strings.Contains(logs.String(), "GOMEMLIMIT=540MiB") {
		t.Fatalf("log does not say GOMEMLIMIT was used:\n%s", logs.String())
	}

	// unset: 90% of the cgroup's limit, logged
	logs.Reset()
	want := int64(1<<30) / 100 * memLimitPercent
	if got := applyMemoryLimit(log, func(string) string { return "" }, root, cg); got != want {
		t.Fatalf("set %d, want %d", got, want)
	}
	if got := debug.SetMemoryLimit(-1); got != want {
		t.Fatalf("runtime limit %d, want %d", got, want)
	}
	if !strings.Contains(logs.String(), "limit_mib=921") || !strings.Contains(logs.String(), "cgroup_limit_mib=1024") {
		t.Fatalf("log does not give the limit chosen:\n%s", logs.String())
	}

	// no limit anywhere: left as it was
	debug.SetMemoryLimit(sentinel)
	writeFiles(t, root, map[string]string{"memory.max": "max\n"})
	if got := applyMemoryLimit(log, func(string) string { return "" }, root, cg); got != 0 {
		t.Fatalf("no cgroup limit: set %d", got)
	}
	if got := debug.SetMemoryLimit(-1); got != sentinel {
		t.Fatalf("no cgroup limit: runtime limit %d, want it left at %d", got, sentinel)
	}
}
