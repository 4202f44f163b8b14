package routes

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"
)

// [listen] admin_auth: what the admin listener asks of a client before
// it serves the status page (/) and /metrics. /healthz and /readyz stay
// open, for load balancer and kubelet probes.
//
//	admin_auth = "bearer:TOKEN"                  Authorization: Bearer TOKEN (16+ characters)
//	admin_auth = "basic:USER:sha256:HEX"         HTTP basic auth; HEX is the password's SHA-256
//	admin_auth = "basic:USER:$2y$10$..."         HTTP basic auth; a bcrypt hash (htpasswd -nbB)
//
// GATEHOUSE_ADMIN_AUTH overrides the file, so the secret need not be in it.
// Every comparison is constant-time (hashes of equal length are compared).

// EnvAdminAuth overrides [listen] admin_auth.
const EnvAdminAuth = "GATEHOUSE_ADMIN_AUTH"

// MinAdminToken is the shortest bearer token admin_auth accepts.
const MinAdminToken = 16

// AdminAuth checks admin requests against [listen] admin_auth.
type AdminAuth struct {
	kind   string   // "bearer" or "basic"
	token  [32]byte // bearer: SHA-256 of the token
	user   [32]byte // basic: SHA-256 of the user name
	sha    []byte   // basic: the password's SHA-256 (nil with bcrypt)
	bcrypt []byte   // basic: a bcrypt hash

	// bcrypt costs tens of milliseconds per check: a page reloading every
	// 10 s and a Prometheus scrape would pay it each time, and a stranger
	// sending wrong passwords could keep the CPU busy. The credentials
	// that passed are remembered (as a SHA-256), and at most
	// bcryptSlots checks run at once.
	mu     sync.Mutex
	passed *[32]byte
	slots  chan struct{}
}

const bcryptSlots = 2

// ParseAdminAuth parses an admin_auth value ("" means none: nil, nil).
func ParseAdminAuth(s string) (*AdminAuth, error) {
	if s == "" {
		return nil, nil
	}
	kind, rest, _ := strings.Cut(s, ":")
	switch kind {
	case "bearer":
		if len(rest) < MinAdminToken {
			return nil, fmt.Errorf("admin_auth: the bearer token is %d characters; use at least %d random ones (e.g. openssl rand -hex 24)", len(rest), MinAdminToken)
		}
		if strings.ContainsAny(rest, " \t\r\n") {
			return nil, errors.New("admin_auth: the bearer token must not contain spaces")
		}
		return &AdminAuth{kind: kind, token: sha256.Sum256([]byte(rest))}, nil
	case "basic":
		user, hash, ok := strings.Cut(rest, ":")
		if !ok || user == "" || hash == "" {
			return nil, errors.New(`admin_auth: want "basic:USER:sha256:HEX" or "basic:USER:BCRYPT-HASH"`)
		}
		a := &AdminAuth{kind: kind, user: sha256.Sum256([]byte(user)), slots: make(chan struct{}, bcryptSlots)}
		switch {
		case strings.HasPrefix(hash, "sha256:"):
			b, err := hex.DecodeString(strings.TrimPrefix(hash, "sha256:"))
			if err != nil || len(b) != sha256.Size {
				return nil, errors.New("admin_auth: sha256: wants 64 hex digits, the SHA-256 of the password (printf %s PASSWORD | sha256sum)")
			}
			a.sha = b
		case strings.HasPrefix(hash, "$2a$") || strings.HasPrefix(hash, "$2b$") || strings.HasPrefix(hash, "$2y$"):
			if _, err := bcrypt.Cost([]byte(hash)); err != nil {
				return nil, fmt.Errorf("admin_auth: bcrypt hash: %v", err)
			}
			a.bcrypt = []byte(hash)
		default:
			return nil, errors.New(`admin_auth: the password hash must be "sha256:HEX" or a bcrypt hash ($2a$, $2b$, $2y$)`)
		}
		return a, nil
	}
	return nil, fmt.Errorf(`admin_auth = %q: want "bearer:TOKEN", "basic:USER:sha256:HEX" or "basic:USER:BCRYPT-HASH"`, redact(s))
}

// redact keeps a secret out of error messages: the kind and its length.
func redact(s string) string {
	kind, _, _ := strings.Cut(s, ":")
	if len(kind) > 10 {
		kind = kind[:10]
	}
	return fmt.Sprintf("%s:… (%d characters)", kind, len(s))
}

// Allow reports whether r carries the configured credentials.
func (a *AdminAuth) Allow(r *http.Request) bool {
	if a == nil {
		return true
	}
	h := r.Header.Get("Authorization")
	switch a.kind {
	case "bearer":
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return false
		}
		got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		return subtle.ConstantTimeCompare(got[:], a.token[:]) == 1
	case "basic":
		user, pass, ok := r.BasicAuth()
		if !ok {
			return false
		}
		u := sha256.Sum256([]byte(user))
		userOK := subtle.ConstantTimeCompare(u[:], a.user[:]) == 1
		if a.sha != nil {
			p := sha256.Sum256([]byte(pass))
			return subtle.ConstantTimeCompare(p[:], a.sha) == 1 && userOK
		}
		if !userOK {
			return false
		}
		return a.checkBcrypt(r.Context(), user, pass)
	}
	return false
}

func (a *AdminAuth) checkBcrypt(ctx context.Context, user, pass string) bool {
	key := sha256.Sum256([]byte(user + "\x00" + pass))
	a.mu.Lock()
	passed := a.passed
	a.mu.Unlock()
	if passed != nil && subtle.ConstantTimeCompare(passed[:], key[:]) == 1 {
		return true
	}
	select {
	case a.slots <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	err := bcrypt.CompareHashAndPassword(a.bcrypt, []byte(pass))
	<-a.slots
	if err != nil {
		return false
	}
	a.mu.Lock()
	a.passed = &key
	a.mu.Unlock()
	return true
}

// Challenge is the WWW-Authenticate value of a 401.
func (a *AdminAuth) Challenge() string {
	if a != nil && a.kind == "basic" {
		return `Basic realm="gatehouse admin", charset="UTF-8"`
	}
	return `Bearer realm="gatehouse admin"`
}

// Warnings lists what is valid but probably a mistake: an admin listener
// reachable from other hosts (it shows every name, error and upstream)
// without admin_auth.
func (c *Config) Warnings() []string {
	var out []string
	if a := c.Listen.Admin; a != "" && c.Listen.AdminAuth == "" && !loopbackAddr(a) {
		out = append(out, fmt.Sprintf("[listen] admin = %q is reachable from other hosts and admin_auth is not set: "+
			"anyone who reaches it can read the status page and /metrics (every name, error and upstream). "+
			"Bind it to 127.0.0.1, or set admin_auth = \"bearer:TOKEN\" (see README, Status page)", a))
	}
	return out
}

// loopbackAddr reports whether a listen address binds loopback only.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
