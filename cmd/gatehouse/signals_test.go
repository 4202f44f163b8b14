package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
)

// TestGatehouseProcess is not a test: it is gatehouse itself, run in a
// child process by the signal tests (the test binary re-executed).
func TestGatehouseProcess(t *testing.T) {
	args := os.Getenv("GATEHOUSE_TEST_PROCESS")
	if args == "" {
		t.Skip("runs only as the child of the signal tests")
	}
	os.Exit(realMain(strings.Split(args, "\n"), os.Stdout, os.Stderr))
}

// process is gatehouse running as a child process.
type process struct {
	cmd   *exec.Cmd
	https string
	logs  *logBuffer
	exit  chan int
}

func startProcess(t *testing.T, cfgPath string) *process {
	t.Helper()
	return startProcessArgs(t, nil, "run", "--config", cfgPath)
}

// startProcessArgs runs gatehouse with args (and extra environment).
func startProcessArgs(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestGatehouseProcess$")
	cmd.Env = append(append(os.Environ(), env...), "GATEHOUSE_TEST_PROCESS="+strings.Join(args, "\n"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, logs: &logBuffer{t: t}, exit: make(chan int, 1)}
	serving := make(chan string, 1)
	var once sync.Once
	re := regexp.MustCompile(`gatehouse serving"? https=(\S+)`)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(p.logs, line)
			t.Log("child:", line)
			if m := re.FindStringSubmatch(line); m != nil {
				once.Do(func() { serving <- m[1] })
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		err := cmd.Wait()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		p.exit <- code
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-p.exit:
		case <-time.After(5 * time.Second):
		}
	})
	select {
	case p.https = <-serving:
	case <-time.After(10 * time.Second):
		t.Fatal("the gatehouse process did not start serving within 10 s")
	}
	return p
}

func (p *process) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// The gatehouse process reloads on SIGHUP and on a changed config file,
// drains on SIGTERM, and exits at once on a second signal.
func TestSignals(t *testing.T) {
	m := newManualEnv(t)
	a, b, c := upstream(t, "A"), upstream(t, "B"), upstream(t, "C")
	db := tcpUpstream(t)
	write := func(routes string) {
		text := fmt.Sprintf("[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"\"\nadmin = \"\"\n\n[storage]\ndir = %q\n\n[timeouts]\nshutdown_drain = \"20s\"\n%s", m.storage, routes)
		if err := os.WriteFile(m.path+".tmp", []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(m.path+".tmp", m.path); err != nil {
			t.Fatal(err)
		}
	}
	routes := m.route("a.test", a.URL, "") + m.route("db.test", db, `mode = "tcp"`)
	write(routes)
	p := startProcess(t, m.path)
	get := func(name string) error {
		res, err := client(p.https, m.roots, false).Get("https://" + name + "/")
		if err != nil {
			return err
		}
		if body := readAll(t, res); !strings.HasPrefix(body, "upstream=") {
			return fmt.Errorf("%s: %q", name, body)
		}
		return nil
	}
	if err := get("a.test"); err != nil {
		t.Fatal(err)
	}

	t.Run("SIGHUP reloads", func(t *testing.T) {
		routes += m.route("b.test", b.URL, "")
		write(routes)
		p.signal(t, syscall.SIGHUP)
		testkit.WaitFor(t, 5*time.Second, "b.test served after SIGHUP", func() error { return get("b.test") })
		p.logs.waitCount(t, 5*time.Second, 1, "SIGHUP: reloading the config") // the reload was SIGHUP's
	})

	t.Run("a changed config file reloads", func(t *testing.T) {
		routes += m.route("c.test", c.URL, "")
		write(routes)
		testkit.WaitFor(t, 8*time.Second, "c.test served after the file changed", func() error { return get("c.test") })
		p.logs.waitCount(t, 5*time.Second, 1, "config or certificate file changed; reloading") // the watcher's
		p.logs.waitCount(t, 5*time.Second, 2, "config reloaded")                               // SIGHUP's and the watcher's, each once
	})

	t.Run("SIGTERM drains, a second signal exits at once", func(t *testing.T) {
		tcp, err := testkit.DialTLS(p.https, "db.test", m.roots)
		if err != nil {
			t.Fatal(err)
		}
		defer tcp.Close()
		lc := newLineConn(tcp)
		if err := lc.roundTrip("open", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		p.signal(t, syscall.SIGTERM)
		p.logs.waitLog(t, 5*time.Second, "shutting down: draining connections")
		time.Sleep(300 * time.Millisecond)
		select {
		case code := <-p.exit:
			t.Fatalf("exited (%d) with a stream open, within a 20 s drain", code)
		default:
		}
		if err := lc.roundTrip("still open while draining", 5*time.Second); err != nil {
			t.Errorf("stream during the drain: %v", err)
		}
		began := time.Now()
		p.signal(t, syscall.SIGINT)
		select {
		case code := <-p.exit:
			if code != 1 {
				t.Errorf("exit code %d after the second signal, want 1", code)
			}
			t.Logf("exited %v after the second signal", time.Since(began).Round(time.Millisecond))
		case <-time.After(5 * time.Second):
			t.Fatal("the second signal did not end the process")
		}
	})
}

// SIGTERM with nothing open: the process exits 0 at once.
func TestSIGTERMExitsWhenDrained(t *testing.T) {
	m := newManualEnv(t)
	text := fmt.Sprintf("[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"\"\nadmin = \"\"\n\n[storage]\ndir = %q\n%s", m.storage, m.route("a.test", upstream(t, "A").URL, ""))
	if err := os.WriteFile(m.path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProcess(t, m.path)
	res, err := client(p.https, m.roots, true).Get("https://a.test/")
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, res)
	began := time.Now()
	p.signal(t, syscall.SIGTERM)
	select {
	case code := <-p.exit:
		if code != 0 {
			t.Errorf("exit code %d, want 0", code)
		}
		t.Logf("exited %v after SIGTERM", time.Since(began).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("did not exit within 10 s of SIGTERM")
	}
}
