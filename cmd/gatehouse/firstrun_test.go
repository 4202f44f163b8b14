package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The first five minutes of a new user: each mistake gives one clear
// line that says what is wrong and what to do, and exit status 1.
func TestFirstRunErrors(t *testing.T) {
	busy := listen(t) // port "443" already in use
	defer busy.Close()
	dir := t.TempDir()
	notDir := filepath.Join(dir, "a-file")
	os.WriteFile(notDir, []byte("x"), 0o600)
	route := "\n[[route]]\nhosts = [\"app.example.test\"]\nupstream = \"http://127.0.0.1:8080\"\n"
	base := func(listen, storage string) string {
		return fmt.Sprintf("[listen]\nhttps = %q\nhttp = \"\"\nadmin = \"\"\n[acme]\nemail = \"ops@example.test\"\ndirectory = \"https://127.0.0.1:1/dir\"\nchallenges = [\"tls-alpn-01\"]\n[storage]\ndir = %q\n", listen, storage)
	}
	cases := []struct {
		name   string
		config string
		want   []string
	}{
		{"typo in a key", strings.Replace(base("127.0.0.1:0", dir), "email", "emial", 1) + route,
			[]string{`:6: unknown key "emial" in [acme] (did you mean "email"?)`}},
		{"no email", strings.Replace(base("127.0.0.1:0", dir), "email = \"ops@example.test\"\n", "", 1) + route,
			[]string{"[acme] email is missing", `set email = "you@example.com" in [acme]`}},
		{"port in use", base(busy.Addr().String(), dir) + route,
			[]string{"cannot listen on " + busy.Addr().String() + " (https)", "another process holds that port"}},
		{"storage not writable", base("127.0.0.1:0", filepath.Join(notDir, "storage")) + route,
			[]string{"storage dir " + filepath.Join(notDir, "storage"), "give gatehouse's user write access", "GATEHOUSE_STORAGE_DIR"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "gatehouse.toml")
			os.WriteFile(p, []byte(c.config), 0o600)
			var out, errOut strings.Builder
			if code := realMain([]string{"run", "--config", p}, &out, &errOut); code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			msg := strings.TrimSpace(errOut.String())
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q lacks %q", msg, w)
				}
			}
			if n := strings.Count(msg, "\n") + 1; n != 1 {
				t.Errorf("want one line, got %d:\n%s", n, msg)
			}
		})
	}
}
