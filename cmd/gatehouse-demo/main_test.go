package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The demo as a new user runs it (issue 14): the real demo binary, built
// as `go build` builds it, started as a child process with its own
// TMPDIR, so the test can see that nothing is left behind.

var bins struct {
	dir       string // removed by TestMain
	demo      string // go build ./cmd/gatehouse-demo
	demoTrim  string // the same with -trimpath: no source path inside
	gatehouse string // go build ./cmd/gatehouse
	root      string // the module root
}

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "demo-test-bins-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		bins.dir = dir
		bins.root, _ = filepath.Abs(filepath.Join("..", ".."))
		bins.demo = filepath.Join(dir, "plain", "gatehouse-demo")
		bins.demoTrim = filepath.Join(dir, "trim", "gatehouse-demo")
		bins.gatehouse = filepath.Join(dir, "gh", "gatehouse")
		for _, b := range [][]string{
			{"build", "-o", bins.demo, "."},
			{"build", "-trimpath", "-o", bins.demoTrim, "."},
			{"build", "-o", bins.gatehouse, "../gatehouse"},
		} {
			build := exec.Command("go", b...)
			// exactly the flags above: a -trimpath in the caller's GOFLAGS
			// would make the plain demo the trimmed one
			build.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
			if out, err := build.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "go %v: %v\n%s", b, err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// demoProc is one run of the demo binary.
type demoProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	tmp  string // its TMPDIR: empty again after every exit
	mu   sync.Mutex
	out  strings.Builder
	exit chan int
}

func startDemo(t *testing.T, bin, cwd string, args ...string) *demoProc {
	t.Helper()
	p := &demoProc{t: t, tmp: filepath.Join(t.TempDir(), "tmp"), exit: make(chan int, 1)}
	if err := os.Mkdir(p.tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = cwd
	p.cmd.Env = append(os.Environ(), "TMPDIR="+p.tmp)
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = p.cmd.Stdout
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
		err := p.cmd.Wait()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		p.exit <- code
	}()
	t.Cleanup(func() {
		// SIGINT first, so a demo still running stops its gatehouse too
		_ = p.cmd.Process.Signal(syscall.SIGINT)
		select {
		case code := <-p.exit:
			p.exit <- code
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exit
		}
		if t.Failed() {
			t.Logf("demo output:\n%s", p.output())
		}
	})
	return p
}

func (p *demoProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitLine waits for a line containing sub; it fails if the demo exits first.
func (p *demoProc) waitLine(sub string, limit time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(limit)
	for !strings.Contains(p.output(), sub) {
		select {
		case code := <-p.exit:
			p.exit <- code
			if strings.Contains(p.output(), sub) {
				return
			}
			p.t.Fatalf("the demo exited (%d) before printing %q", code, sub)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("no %q within %s", sub, limit)
		}
	}
}

// waitExit returns the exit code; a demo still running after limit is a
// hang, not a slow machine (limits are minutes where the work is seconds).
func (p *demoProc) waitExit(limit time.Duration) int {
	p.t.Helper()
	select {
	case code := <-p.exit:
		p.exit <- code
		return code
	case <-time.After(limit):
		p.t.Fatalf("the demo still runs after %s", limit)
	}
	return -1
}

// assertClean checks the demo's TMPDIR holds nothing.
func (p *demoProc) assertClean() {
	p.t.Helper()
	ents, err := os.ReadDir(p.tmp)
	if err != nil {
		p.t.Fatal(err)
	}
	for _, e := range ents {
		p.t.Errorf("left behind in TMPDIR: %s", e.Name())
	}
}

// httpsPortOf reads the https port from the config the demo printed.
func (p *demoProc) httpsPortOf() string {
	p.t.Helper()
	m := regexp.MustCompile(`https = "127\.0\.0\.1:(\d+)"`).FindStringSubmatch(p.output())
	if m == nil {
		p.t.Fatal("no https address in the demo's config")
	}
	return m[1]
}

// A port the demo needs is taken: it says so at once, naming its own
// flag, before building or starting anything.
func TestDemoBusyPort(t *testing.T) {
	for _, c := range []struct{ busy, other string }{{"http-port", "https-port"}, {"https-port", "http-port"}} {
		t.Run(c.busy, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			p := startDemo(t, bins.demo, t.TempDir(), "--gatehouse", bins.gatehouse,
				"--"+c.busy, fmt.Sprint(port), "--"+c.other, "0")
			if code := p.waitExit(30 * time.Second); code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			out := p.output()
			if want := fmt.Sprintf("demo: port %d is in use: pass --%s", port, c.busy); !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
			if strings.Contains(out, "waiting for gatehouse") || strings.Contains(out, "config (") {
				t.Errorf("the demo went on with a busy port:\n%s", out)
			}
			p.assertClean()
		})
	}
}

// Ctrl-C (SIGINT) stops the demo at every stage: while building
// gatehouse, while waiting for certificates, and once it is up. Each
// time gatehouse is stopped and the temporary folders are gone.
func TestDemoInterrupt(t *testing.T) {
	cases := []struct {
		name  string
		build bool   // let the demo build gatehouse (else --gatehouse)
		at    string // send SIGINT when this line appears
		code  int
	}{
		{"while building", true, "building gatehouse", 130},
		{"while waiting for certificates", false, "config (", 130},
		{"once up", false, "Ctrl-C to stop.", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"--https-port", "0", "--http-port", "0"}
			if !c.build {
				args = append(args, "--gatehouse", bins.gatehouse)
			}
			p := startDemo(t, bins.demo, bins.root, args...)
			p.waitLine(c.at, 3*time.Minute)
			if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			code := p.waitExit(time.Minute)
			out := p.output()
			if code == 0 && c.code == 130 && c.at == "config (" && strings.Contains(out, "Ctrl-C to stop.") {
				// the certificates came before the signal (a second or
				// two): the running stage was interrupted instead
				t.Log("certificates arrived before SIGINT; stopped from the running stage")
			} else if code != c.code {
				t.Errorf("exit %d, want %d", code, c.code)
			}
			if code == 130 && !strings.Contains(out, "demo: interrupted; stopped everything and removed its temporary files") {
				t.Errorf("no interruption message:\n%s", out)
			}
			if strings.Contains(out, "config (") {
				// gatehouse was started: it must be gone with the demo
				addr := "127.0.0.1:" + p.httpsPortOf()
				if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
					c.Close()
					t.Errorf("%s still accepts connections after the demo exited", addr)
				}
			}
			p.assertClean()
		})
	}
}

// Run from outside the repository, the demo still finds the gatehouse
// source it was built from and completes; a demo binary that carries no
// source path (-trimpath) says where to run it from instead of go's
// "go.mod file not found".
func TestDemoFromOutsideRepo(t *testing.T) {
	outside := t.TempDir()
	t.Run("built from a checkout", func(t *testing.T) {
		p := startDemo(t, bins.demo, outside, "--check", "--https-port", "0", "--http-port", "0")
		if code := p.waitExit(5 * time.Minute); code != 0 {
			t.Errorf("exit %d, want 0", code)
		}
		out := p.output()
		for _, w := range []string{"building gatehouse from " + bins.root, "demo check: PASS"} {
			if !strings.Contains(out, w) {
				t.Errorf("output lacks %q", w)
			}
		}
		p.assertClean()
	})
	t.Run("no source path", func(t *testing.T) {
		p := startDemo(t, bins.demoTrim, outside, "--check", "--https-port", "0", "--http-port", "0")
		if code := p.waitExit(time.Minute); code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		out := p.output()
		for _, w := range []string{"cd path/to/gatehouse && go run ./cmd/gatehouse-demo", "pass --gatehouse PATH"} {
			if !strings.Contains(out, w) {
				t.Errorf("output lacks %q:\n%s", w, out)
			}
		}
		if strings.Contains(out, "go.mod file not found") {
			t.Errorf("go's message instead of the demo's:\n%s", out)
		}
		p.assertClean()
	})
}
