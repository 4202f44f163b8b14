package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clkTck is USER_HZ, the unit of utime/stime in /proc/<pid>/stat. It is
// 100 on every Linux the bench runs on; the driver checks getconf once.
var clkTck = 100.0

func initClkTck() {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			clkTck = v
		}
	}
}

// started is every process the driver started, killed on exit.
var started struct {
	sync.Mutex
	procs    []*exec.Cmd
	stopping bool // a signal arrived: nothing new may start
}

// spawn starts a command pinned to cpu (taskset execs it, so the
// process's pid is the command's own) in its own process group.
func spawn(cpu string, env []string, logPath string, name string, args ...string) (*exec.Cmd, error) {
	argv := append([]string{"-c", cpu, name}, args...)
	cmd := exec.Command("taskset", argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Env = append(os.Environ(), env...)
	if logPath != "" {
		f, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	track(cmd)
	return cmd, nil
}

func track(cmd *exec.Cmd) {
	started.Lock()
	started.procs = append(started.procs, cmd)
	if started.stopping {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	started.Unlock()
}

// killAllNow is the signal path: no new process starts after it, and
// every process group the driver started gets SIGTERM, then SIGKILL.
// It does not wait on the commands (their owners do).
func killAllNow() {
	started.Lock()
	started.stopping = true
	procs := append([]*exec.Cmd(nil), started.procs...)
	started.Unlock()
	for _, c := range procs {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
	}
	time.Sleep(2 * time.Second)
	started.Lock()
	procs = append([]*exec.Cmd(nil), started.procs...)
	started.Unlock()
	for _, c := range procs {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
	}
}

func untrack(cmd *exec.Cmd) {
	started.Lock()
	for i, c := range started.procs {
		if c == cmd {
			started.procs = append(started.procs[:i], started.procs[i+1:]...)
			break
		}
	}
	started.Unlock()
}

// stop ends one process the driver started (and its process group:
// nginx's workers), waiting a bounded time.
func stop(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	pid := cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-done
	}
	untrack(cmd)
}

// stopAll ends every process still running that the driver started.
func stopAll() {
	started.Lock()
	procs := append([]*exec.Cmd(nil), started.procs...)
	started.Unlock()
	for _, c := range procs {
		stop(c)
	}
}

// runLoad runs a load generator pinned to CPU 1 with a time bound and
// returns its stdout.
func runLoad(limit time.Duration, nice bool, name string, args ...string) ([]byte, error) {
	prio := ""
	if nice {
		prio = "nice"
	}
	return runLoadOn("1", limit, prio, name, args...)
}

// runLoadOn is runLoad on the CPUs cpus (a taskset list), at prio: ""
// (as the driver), "nice" (nice 19) or "idle" (SCHED_IDLE: runs only
// when nothing else on its CPU wants to, and a waking task of any other
// policy preempts it at once).
func runLoadOn(cpus string, limit time.Duration, prio string, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	argv := append([]string{"-c", cpus, name}, args...)
	bin := "taskset"
	switch prio {
	case "nice":
		argv = append([]string{"-n", "19", "taskset"}, argv...)
		bin = "nice"
	case "idle":
		argv = append([]string{"-i", "0", "taskset"}, argv...)
		bin = "chrt"
	}
	cmd := exec.CommandContext(ctx, bin, argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// registered so that a signal to the driver stops it too
	track(cmd)
	err := cmd.Wait()
	untrack(cmd)
	if err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, lastLines(errb.String(), 5))
	}
	return out.Bytes(), nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

// tree returns pid and all its descendants.
func tree(root int) []int {
	ents, _ := os.ReadDir("/proc")
	parent := map[int]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := readStat(pid)
		if err != nil {
			continue
		}
		parent[pid] = f.ppid
	}
	out := []int{root}
	for changed := true; changed; {
		changed = false
		for pid, pp := range parent {
			if contains(out, pp) && !contains(out, pid) {
				out = append(out, pid)
				changed = true
			}
		}
	}
	return out
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

type statFields struct {
	ppid         int
	utime, stime float64
}

func readStat(pid int) (statFields, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return statFields{}, err
	}
	// comm may hold spaces and parentheses: fields start after the last ')'
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return statFields{}, fmt.Errorf("bad stat for %d", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is state (field 3); ppid field 4, utime 14, stime 15
	if len(f) < 13 {
		return statFields{}, fmt.Errorf("short stat for %d", pid)
	}
	ppid, _ := strconv.Atoi(f[1])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return statFields{ppid: ppid, utime: ut, stime: st}, nil
}

// cpuSeconds is utime+stime of root and every descendant, in seconds.
func cpuSeconds(root int) float64 {
	var sum float64
	for _, pid := range tree(root) {
		if f, err := readStat(pid); err == nil {
			sum += (f.utime + f.stime) / clkTck
		}
	}
	return sum
}

// cpu0Idle is CPU 0's idle and iowait time since boot, in seconds
// (/proc/stat): the proxy runs there alone, so none left under a flood
// means its core was saturated.
func cpu0Idle() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 5 && f[0] == "cpu0" {
			idle, _ := strconv.ParseFloat(f[4], 64)
			iow, _ := strconv.ParseFloat(f[5], 64)
			return (idle + iow) / clkTck
		}
	}
	return 0
}

// rssKiB is VmRSS of root and every descendant, in KiB.
func rssKiB(root int) float64 {
	var sum float64
	for _, pid := range tree(root) {
		f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				sum += kb
			}
		}
		f.Close()
	}
	return sum
}

// readFirstLine reads one line from r within limit.
func readFirstLine(r io.Reader, limit time.Duration) (string, error) {
	ch := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		br := bufio.NewReader(r)
		l, err := br.ReadString('\n')
		if err != nil {
			errc <- err
			return
		}
		ch <- strings.TrimSpace(l)
		go func() { _, _ = io.Copy(io.Discard, br) }()
	}()
	select {
	case l := <-ch:
		return l, nil
	case err := <-errc:
		return "", err
	case <-time.After(limit):
		return "", fmt.Errorf("no output within %s", limit)
	}
}
