package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The first five minutes (issue 14): what a new user sees when asking
// for help, forgetting the config file, and starting a quick start.

// run runs gatehouse in-process and returns its exit code and output.
func runMain(args ...string) (int, string, string) {
	var out, errOut strings.Builder
	code := realMain(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// `gatehouse run --help`, `validate --help`, `help`, `help run`: a
// description of the command on stdout and exit 0; a bad flag points at
// the help and exits 2.
func TestFirstFiveHelp(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"run", "--help"}, []string{"usage: gatehouse run", "quick start", "~/.local/share/gatehouse", "-config", "-from"}},
		{[]string{"run", "-h"}, []string{"usage: gatehouse run"}},
		{[]string{"validate", "--help"}, []string{"usage: gatehouse validate", "Checks a config file", "-config"}},
		{[]string{"help"}, []string{"gatehouse run", "gatehouse validate", "gatehouse certs", "gatehouse help [COMMAND]"}},
		{[]string{"help", "run"}, []string{"usage: gatehouse run", "-https"}},
		{[]string{"help", "certs"}, []string{"usage: gatehouse certs", "-storage"}},
		{[]string{"certs", "--help"}, []string{"usage: gatehouse certs"}},
		{[]string{"healthcheck", "--help"}, []string{"usage: gatehouse healthcheck"}},
		{[]string{"import", "--help"}, []string{"usage: gatehouse import"}},
		{[]string{"storage", "copy", "--help"}, []string{"gatehouse storage copy", "-overwrite"}},
		{[]string{"help", "version"}, []string{"usage: gatehouse version"}},
		{[]string{"ech", "--help"}, []string{"usage: gatehouse ech", "-json"}},
	} {
		code, out, errOut := runMain(c.args...)
		if code != 0 {
			t.Errorf("%v: exit %d, want 0 (stderr %q)", c.args, code, errOut)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: stdout lacks %q:\n%s", c.args, w, out)
			}
		}
	}
	code, _, errOut := runMain("run", "--bogus")
	if code != 2 || !strings.Contains(errOut, "-bogus") || !strings.Contains(errOut, "gatehouse help run") {
		t.Errorf("run --bogus: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = runMain("help", "nosuch")
	if code != 2 || !strings.Contains(errOut, `no command "nosuch"`) {
		t.Errorf("help nosuch: exit %d, stderr %q", code, errOut)
	}
}

// No config file: the message says which file was looked for and names
// both ways to give one, --config and GATEHOUSE_CONFIG.
func TestFirstFiveMissingConfig(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	t.Setenv("GATEHOUSE_CONFIG", "")
	for _, c := range []struct {
		args []string
		env  string
		want string
	}{
		{[]string{"run"}, "", filepath.Join(dir, "gatehouse.toml") + " (the default: neither --config nor GATEHOUSE_CONFIG is set)"},
		{[]string{"validate"}, "", filepath.Join(dir, "gatehouse.toml")},
		{[]string{"validate", "--config", "other.toml"}, "", filepath.Join(dir, "other.toml") + " (given with --config)"},
		{[]string{"validate"}, filepath.Join(dir, "env.toml"), filepath.Join(dir, "env.toml") + " (named by GATEHOUSE_CONFIG)"},
		{[]string{"certs", "--config", "other.toml"}, "", "no config file " + filepath.Join(dir, "other.toml")},
	} {
		t.Setenv("GATEHOUSE_CONFIG", c.env)
		code, _, errOut := runMain(c.args...)
		if code != 1 {
			t.Errorf("%v: exit %d, want 1", c.args, code)
		}
		for _, w := range []string{c.want, "pass --config FILE or set GATEHOUSE_CONFIG=FILE", "gatehouse run --from NAME --to URL"} {
			if !strings.Contains(errOut, w) {
				t.Errorf("%v: message %q lacks %q", c.args, errOut, w)
			}
		}
		if n := strings.Count(strings.TrimSpace(errOut), "\n"); n != 0 {
			t.Errorf("%v: want one line, got:\n%s", c.args, errOut)
		}
	}
}

// validate counts its routes in English: "ok (1 route)", "ok (2 routes)".
func TestFirstFiveValidatePlural(t *testing.T) {
	dir := t.TempDir()
	one := "[acme]\nemail = \"a@b.example\"\n[[route]]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:8080\"\n"
	two := one + "[[route]]\nhosts = [\"b.example\"]\nupstream = \"http://127.0.0.1:8081\"\n"
	for _, c := range []struct{ toml, want string }{{one, ": ok (1 route)\n"}, {two, ": ok (2 routes)\n"}} {
		p := filepath.Join(dir, "g.toml")
		os.WriteFile(p, []byte(c.toml), 0o600)
		code, out, errOut := runMain("validate", "--config", p)
		if code != 0 || out != p+c.want {
			t.Errorf("exit %d, stdout %q (want %q), stderr %q", code, out, p+c.want, errOut)
		}
	}
}

// The quick start says where its certificates go, and says "disabled"
// for a listener it does not open; `gatehouse certs` then reads that
// storage with --storage, or with no flag and no config file at all.
func TestFirstFiveQuickStartStorage(t *testing.T) {
	up := upstream(t, "A")
	storage := filepath.Join(t.TempDir(), "store")
	p := startProcessArgs(t, []string{"GATEHOUSE_STORAGE_DIR=" + storage, "GATEHOUSE_CONFIG="},
		"run", "--from", "localhost", "--to", strings.TrimPrefix(up.URL, "http://"),
		"--https", "127.0.0.1:0", "--http", "", "--admin", "127.0.0.1:0")
	p.logs.waitLog(t, 10*time.Second, "certificates and keys are stored in "+storage, "quick start", "gatehouse certs")
	p.logs.waitLog(t, 10*time.Second, "gatehouse serving", "http=disabled")
	if n := p.logs.count("http=<nil>"); n != 0 {
		t.Errorf("%d log lines still say http=<nil>", n)
	}
	// /readyz before and after the first storage probe: never the zero time
	p.logs.mu.Lock()
	m := regexp.MustCompile(`admin=(127\.0\.0\.1:\d+)`).FindStringSubmatch(p.logs.b.String())
	p.logs.mu.Unlock()
	if m == nil {
		t.Fatal("no admin address in the log")
	}
	res, err := http.Get("http://" + m[1] + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if strings.Contains(string(body), "0001-01-01") {
		t.Errorf("/readyz shows the zero time:\n%s", body)
	}
	waitFor(t, 10*time.Second, "localhost certificate stored", func() error {
		_, err := os.Stat(filepath.Join(storage, "pki", "root.crt"))
		return err
	})
	waitFor(t, 10*time.Second, "gatehouse certs --storage lists localhost", func() error {
		code, out, errOut := runMain("certs", "--storage", storage)
		if code != 0 || !strings.Contains(out, "localhost") {
			return fmt.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
		}
		return nil
	})
	// no config file anywhere: the quick start's storage (here from
	// GATEHOUSE_STORAGE_DIR, as the quick start itself took it)
	t.Chdir(t.TempDir())
	t.Setenv("GATEHOUSE_CONFIG", "")
	t.Setenv("GATEHOUSE_STORAGE_DIR", storage)
	code, out, errOut := runMain("certs")
	if code != 0 || !strings.Contains(out, "localhost") {
		t.Errorf("certs without a config: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	empty := t.TempDir()
	code, _, errOut = runMain("certs", "--storage", empty)
	if code != 0 || !strings.Contains(errOut, "no certificates in "+empty) {
		t.Errorf("certs on an empty storage: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut = runMain("certs", "--storage", empty, "--config", "x.toml"); code != 1 || !strings.Contains(errOut, "not both") {
		t.Errorf("certs --storage --config: exit %d, stderr %q", code, errOut)
	}
}
