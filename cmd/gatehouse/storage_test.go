package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/etcdtest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = realMain(args, &o, &e)
	return code, o.String(), e.String()
}

// A single-node user moves to etcd without re-issuing: the storage dir a
// real gatehouse filled is copied to etcd and back byte for byte, and a
// gatehouse on the etcd copy serves the same certificates without an
// order. Mistakes exit 1 with the reason and change nothing.
func TestStorageCopy(t *testing.T) {
	e := newEnv(t, acmetest.PebbleOptions{})
	up := upstream(t, "app")
	routesTOML := fmt.Sprintf("\n[[route]]\nhosts = [\"a.test\", \"b.test\"]\nupstream = %q\n", up.URL)
	in := e.start(e.config(routesTOML))
	names := []string{"a.test", "b.test"}
	served := map[string]string{}
	for _, n := range names {
		testkit.WaitFor(t, 60*time.Second, "certificate for "+n, func() error {
			s, err := testkit.ServedSerial(e.httpsAddr(), n, e.roots)
			served[n] = s
			return err
		})
	}
	if err := in.shutdown(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	src := testkit.ReadTree(t, e.storage)
	for k := range src {
		if strings.HasPrefix(k, "locks/") {
			t.Fatalf("lock file %s left in the storage dir after shutdown", k)
		}
	}

	etcd := etcdtest.Start(t, etcdtest.Options{})
	hostPort := strings.TrimPrefix(etcd.URL, "http://")
	to := "etcd://" + hostPort + "/migrated/"

	code, out, errOut := runCLI("storage", "copy", "--from", "dir:"+e.storage, "--to", to)
	if code != 0 {
		t.Fatalf("copy dir -> etcd: exit %d: %s", code, errOut)
	}
	t.Logf("dir -> etcd: %s", strings.TrimSpace(out))
	if want := fmt.Sprintf("copied %d keys from dir:%s to %s", len(src), e.storage, to); !strings.HasPrefix(out, want) {
		t.Errorf("output %q, want it to start with %q", out, want)
	}

	restored := filepath.Join(t.TempDir(), "restored")
	code, out, errOut = runCLI("storage", "copy", "--from", to, "--to", "dir:"+restored)
	if code != 0 {
		t.Fatalf("copy etcd -> dir: exit %d: %s", code, errOut)
	}
	t.Logf("etcd -> dir: %s", strings.TrimSpace(out))
	back := testkit.ReadTree(t, restored)
	for k, v := range src {
		if !bytes.Equal(back[k], v) {
			t.Errorf("%s: %d bytes after dir -> etcd -> dir, %d before", k, len(back[k]), len(v))
		}
	}
	for k := range back {
		if _, ok := src[k]; !ok {
			t.Errorf("%s appeared in the round trip", k)
		}
	}
	for k := range src {
		fi, err := os.Stat(filepath.Join(restored, filepath.FromSlash(k)))
		if err == nil && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s restored with mode %v, want 0600", k, fi.Mode().Perm())
		}
	}

	t.Run("re-running copies nothing and says why", func(t *testing.T) {
		code, out, errOut := runCLI("storage", "copy", "--from", "dir:"+e.storage, "--to", to)
		if code != 0 || !strings.Contains(out, fmt.Sprintf("copied 0 keys")) || !strings.Contains(out, fmt.Sprintf("%d already there", len(src))) {
			t.Errorf("exit %d, %q %q", code, out, errOut)
		}
	})

	t.Run("a differing key in the destination stops the copy", func(t *testing.T) {
		other := t.TempDir()
		var changed string
		for k, v := range src {
			p := filepath.Join(other, filepath.FromSlash(k))
			os.MkdirAll(filepath.Dir(p), 0o700)
			if strings.HasSuffix(k, ".json") && changed == "" {
				changed, v = k, append(append([]byte{}, v...), '\n')
			}
			os.WriteFile(p, v, 0o600)
		}
		code, out, errOut := runCLI("storage", "copy", "--from", "dir:"+other, "--to", to)
		if code != 1 || !strings.Contains(errOut, changed) || !strings.Contains(errOut, "--overwrite") || out != "" {
			t.Errorf("exit %d, stdout %q, stderr %q; want 1 naming %s and --overwrite", code, out, errOut, changed)
		}
		t.Logf("conflict: %s", strings.TrimSpace(errOut))
		code, _, errOut = runCLI("storage", "copy", "--from", to, "--to", "dir:"+filepath.Join(t.TempDir(), "check"))
		if code != 0 {
			t.Fatal(errOut)
		}
		// the etcd copy still holds the original bytes
		code, out, _ = runCLI("storage", "copy", "--from", "dir:"+e.storage, "--to", to)
		if code != 0 || !strings.Contains(out, "copied 0 keys") {
			t.Errorf("after the refused copy the etcd copy differs from the original: %q", out)
		}
	})

	t.Run("mistakes exit 1 with the reason", func(t *testing.T) {
		port, _ := etcdtest.FreePort()
		for _, c := range []struct {
			args []string
			code int
			want string
		}{
			{[]string{"--from", "dir:" + filepath.Join(e.storage, "typo"), "--to", to}, 1, "no such file or directory"},
			{[]string{"--from", "dir:" + e.storage, "--to", fmt.Sprintf("etcd://127.0.0.1:%d/x/", port)}, 1, "connection refused"},
			{[]string{"--from", "etcd://" + hostPort + "/empty/", "--to", "dir:" + t.TempDir()}, 1, "nothing to copy"},
			{[]string{"--from", "/var/lib/gatehouse", "--to", to}, 1, "want dir:PATH"},
			{[]string{"--from", "etcd://etcd/x/", "--to", to}, 1, "no port"},
			{[]string{"--from", "config:/nonexistent.toml", "--to", to}, 1, "cannot read config"},
			{[]string{"--from", "dir:" + e.storage}, 2, "Usage"},
		} {
			start := time.Now()
			code, out, errOut := runCLI(append([]string{"storage", "copy"}, c.args...)...)
			if code != c.code || !strings.Contains(errOut, c.want) || out != "" {
				t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d and %q", c.args, code, out, errOut, c.code, c.want)
			}
			if d := time.Since(start); d > 15*time.Second {
				t.Errorf("%v took %s", c.args, d)
			}
		}
	})

	t.Run("gatehouse on the etcd copy serves without ordering", func(t *testing.T) {
		e.bind()
		cfgPath := e.config(routesTOML)
		b, _ := os.ReadFile(cfgPath)
		text := strings.Replace(string(b), fmt.Sprintf("dir = %q", e.storage),
			fmt.Sprintf("backend = \"etcd\"\nendpoints = [%q]\nprefix = \"migrated/\"", etcd.URL), 1)
		os.WriteFile(cfgPath, []byte(text), 0o600)
		in := e.start(cfgPath)
		defer in.shutdown(2 * time.Second)
		for _, n := range names {
			testkit.WaitFor(t, 10*time.Second, "certificate for "+n+" from etcd", func() error {
				s, err := testkit.ServedSerial(e.httpsAddr(), n, e.roots)
				if err == nil && s != served[n] {
					err = fmt.Errorf("serial %s, want %s", s, served[n])
				}
				return err
			})
			if o := e.pebble.Orders(n); o != 1 {
				t.Errorf("Pebble received %d orders for %s, want 1 (migrated, not re-issued)", o, n)
			}
		}
	})
}
