package routes

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func authReq(hdr string) *http.Request {
	r, _ := http.NewRequest("GET", "http://127.0.0.1/", nil)
	if hdr != "" {
		r.Header.Set("Authorization", hdr)
	}
	return r
}

func basicReq(user, pass string) *http.Request {
	r, _ := http.NewRequest("GET", "http://127.0.0.1/", nil)
	r.SetBasicAuth(user, pass)
	return r
}

func TestAdminAuthBearer(t *testing.T) {
	const tok = "0123456789abcdef"
	a, err := ParseAdminAuth("bearer:" + tok)
	if err != nil {
		t.Fatal(err)
	}
	for hdr, want := range map[string]bool{
		"Bearer " + tok: true, "bearer " + tok: true, "": false, "Bearer": false, "Bearer " + tok + "0": false,
		"Bearer " + tok[:15]: false, "Basic " + tok: false, tok: false,
	} {
		if got := a.Allow(authReq(hdr)); got != want {
			t.Errorf("Authorization %q: allowed %v, want %v", hdr, got, want)
		}
	}
	// the limit: 16 characters
	if _, err := ParseAdminAuth("bearer:" + tok[:MinAdminToken-1]); err == nil || !strings.Contains(err.Error(), "at least 16") {
		t.Errorf("a 15-character token: %v", err)
	}
}

func TestAdminAuthBasic(t *testing.T) {
	// printf %s s3cret-pass | sha256sum
	a, err := ParseAdminAuth("basic:ops:sha256:926d3a2dd68393416b7a8348aaadfe4e0c56de6259e17078a0fa1f4dd6e519ae")
	if err != nil {
		t.Fatal(err)
	}
	if !a.Allow(basicReq("ops", "s3cret-pass")) || a.Allow(basicReq("ops", "s3cret-pasS")) || a.Allow(basicReq("op", "s3cret-pass")) || a.Allow(authReq("")) {
		t.Error("sha256 basic auth decides wrongly")
	}
	hash, err := bcrypt.GenerateFromPassword([]byte("another pass"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseAdminAuth("basic:ops:" + string(hash))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second time from the cache of passed credentials
		if !b.Allow(basicReq("ops", "another pass")) {
			t.Error("bcrypt: the right password refused")
		}
	}
	if b.Allow(basicReq("ops", "another pasS")) || b.Allow(basicReq("root", "another pass")) {
		t.Error("bcrypt: a wrong password or user allowed")
	}
	if b.Challenge() != `Basic realm="gatehouse admin", charset="UTF-8"` {
		t.Errorf("challenge %q", b.Challenge())
	}
}

func TestAdminAuthBadValues(t *testing.T) {
	for _, v := range []string{"token", "bearer:", "bearer:0123456789abcdef 01", "basic:ops", "basic::sha256:00",
		"basic:ops:sha256:zz", "basic:ops:sha256:926d3a", "basic:ops:plaintext", "basic:ops:$2y$xx", "digest:a:b"} {
		if _, err := ParseAdminAuth(v); err == nil {
			t.Errorf("%q accepted", v)
		}
	}
	// a secret in a rejected value is not echoed back
	_, err := ParseAdminAuth("beerer:verysecretvalue")
	if err == nil || strings.Contains(err.Error(), "verysecretvalue") {
		t.Errorf("error %v", err)
	}
}

// validate reports a bad admin_auth with its line; a non-loopback admin
// address without admin_auth is a warning, not an error (probes from a
// kubelet need it), and admin_auth silences it.
func TestAdminAuthConfig(t *testing.T) {
	route := "[[route]]\nhosts = [\"a.example\"]\nupstream = \"http://127.0.0.1:1\"\ntls = \"internal\"\n"
	_, err := Parse([]byte("[listen]\nhttps = \":443\"\nadmin = \"0.0.0.0:2019\"\nadmin_auth = \"bearer:short\"\n" + route))
	if err == nil || !strings.Contains(err.Error(), "line 4") || !strings.Contains(err.Error(), "at least 16") {
		t.Fatalf("bad admin_auth: %v", err)
	}
	for addr, warn := range map[string]bool{"127.0.0.1:2019": false, "[::1]:2019": false, "localhost:2019": false,
		"0.0.0.0:2019": true, ":2019": true, "10.1.2.3:2019": true, "[::]:2019": true} {
		cfg, err := Parse([]byte("[listen]\nhttps = \":443\"\nadmin = \"" + addr + "\"\n" + route))
		if err != nil {
			t.Fatal(err)
		}
		if w := cfg.Warnings(); (len(w) > 0) != warn || warn && !strings.Contains(w[0], "admin_auth") {
			t.Errorf("admin = %q: warnings %q", addr, w)
		}
		cfg, err = Parse([]byte("[listen]\nhttps = \":443\"\nadmin = \"" + addr + "\"\nadmin_auth = \"bearer:0123456789abcdef\"\n" + route))
		if err != nil {
			t.Fatal(err)
		}
		if w := cfg.Warnings(); len(w) > 0 {
			t.Errorf("admin = %q with admin_auth: warnings %q", addr, w)
		}
	}
	t.Setenv(EnvAdminAuth, "bearer:fromtheenvironment")
	cfg, err := Parse([]byte("[listen]\nhttps = \":443\"\nadmin = \"0.0.0.0:2019\"\n" + route))
	if err != nil || cfg.Listen.AdminAuth != "bearer:fromtheenvironment" || len(cfg.Warnings()) > 0 {
		t.Errorf("GATEHOUSE_ADMIN_AUTH: %v %q", err, cfg.Warnings())
	}
}

// At most bcryptSlots bcrypt checks run at once: with every slot taken,
// a request waits, and gives up when it is canceled, without a check.
func TestAdminAuthBcryptSlots(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ParseAdminAuth("basic:ops:" + string(hash))
	if err != nil {
		t.Fatal(err)
	}
	for range bcryptSlots {
		a.slots <- struct{}{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := basicReq("ops", "pw").WithContext(ctx)
	done := make(chan bool)
	go func() { done <- a.Allow(r) }()
	select {
	case <-done:
		t.Fatal("a check ran with every slot taken")
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	select {
	case ok := <-done:
		if ok {
			t.Error("a canceled request was allowed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a canceled request still waits")
	}
	<-a.slots // one free: the right password passes, then from the cache
	if !a.Allow(basicReq("ops", "pw")) || !a.Allow(basicReq("ops", "pw")) {
		t.Error("the right password refused")
	}
	if a.Allow(basicReq("ops", "pW")) {
		t.Error("a wrong password allowed after the right one was cached")
	}
}
