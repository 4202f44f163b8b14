package dnsprovider

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/libdns/libdns"
	"github.com/miekg/dns"
)

// Exec runs an operator's hook for each record, the lego/certbot
// convention:
//
//	COMMAND... present FQDN VALUE
//	COMMAND... cleanup FQDN VALUE
//
// FQDN is absolute with its trailing dot (_acme-challenge.NAME.). Exit
// status 0 means done; anything else fails the challenge, with what the
// hook wrote on stderr in the error. A run is bounded by Timeout; the
// hook's whole process group is killed at the limit.
type Exec struct {
	Command []string
	Timeout time.Duration
}

// maxHookOutput bounds the stderr kept from one hook run.
const maxHookOutput = 4 << 10

// AppendRecords runs "present" for each record.
func (p *Exec) AppendRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	return p.each(ctx, "present", zone, recs)
}

// DeleteRecords runs "cleanup" for each record.
func (p *Exec) DeleteRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	return p.each(ctx, "cleanup", zone, recs)
}

func (p *Exec) each(ctx context.Context, action, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	for _, rec := range recs {
		rr := rec.RR()
		if rr.Type != "TXT" {
			return nil, fmt.Errorf("dnsprovider: only TXT records are supported, not %s", rr.Type)
		}
		if err := p.Run(ctx, action, dns.Fqdn(libdns.AbsoluteName(rr.Name, zone)), rr.Data); err != nil {
			return nil, err
		}
	}
	return recs, nil
}

// PublishHTTPS runs the hook as `COMMAND https FQDN RDATA`: replace the
// HTTPS records at FQDN with one of RDATA (ECH, RFC 9848). A hook that
// knows only present/cleanup fails, and the failure is reported.
func (p *Exec) PublishHTTPS(ctx context.Context, _ string, fqdn, rdata string) error {
	return p.Run(ctx, "https", dns.Fqdn(fqdn), rdata)
}

// Run runs the hook once.
func (p *Exec) Run(ctx context.Context, action, fqdn, value string) error {
	if len(p.Command) == 0 {
		return errors.New("dns hook: no command")
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := append(append([]string(nil), p.Command[1:]...), action, fqdn, value)
	cmd := exec.CommandContext(ctx, p.Command[0], args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// the hook and anything it started (curl, nsupdate)
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 2 * time.Second // a child holding stderr open
	stderr := &capped{max: maxHookOutput}
	cmd.Stderr = stderr
	cmd.Stdout = &capped{max: 0}
	err := cmd.Run()
	if err == nil {
		return nil
	}
	what := strings.Join(p.Command, " ") + " " + action + " " + fqdn
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("killed after %s", timeout)
	}
	if msg := strings.TrimSpace(stderr.String()); msg != "" {
		return fmt.Errorf("dns hook %s: %v; stderr: %s", what, err, msg)
	}
	return fmt.Errorf("dns hook %s: %v (no stderr)", what, err)
}

// capped keeps the first max bytes written to it.
type capped struct {
	mu  sync.Mutex
	max int
	b   bytes.Buffer
	cut bool
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	room := c.max - c.b.Len()
	if len(p) > room {
		c.cut = true
	}
	if room > 0 {
		c.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cut {
		return c.b.String() + " [...]"
	}
	return c.b.String()
}
