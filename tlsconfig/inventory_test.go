package tlsconfig

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

func TestRenewalTime(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// as CAs issue them: NotAfter is the last second of the validity
	long := &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(90*24*time.Hour - time.Second)}
	short := &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(6*24*time.Hour - time.Second)}
	week := &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(7*24*time.Hour - time.Second)}

	if at, by := renewalTime(long, "acme-v02.api.letsencrypt.org-directory", nil); by != "lifetime" || !at.Equal(nb.Add(60*24*time.Hour)) {
		t.Errorf("90-day cert renews %s by %s, want at 60 days (a third left)", at, by)
	}
	if at, _ := renewalTime(short, "acme-v02.api.letsencrypt.org-directory", nil); !at.Equal(nb.Add(3 * 24 * time.Hour)) {
		t.Errorf("6-day cert renews %s, want at half-life", at)
	}
	if at, _ := renewalTime(week, InternalIssuerKey, nil); !at.Round(time.Second).Equal(nb.Add(7 * 24 * time.Hour * 2 / 3).Round(time.Second)) {
		t.Errorf("internal 7-day leaf renews %s, want with a third left", at)
	}
	ri := &acme.RenewalInfo{}
	ri.SuggestedWindow.Start, ri.SuggestedWindow.End = nb.Add(10*24*time.Hour), nb.Add(11*24*time.Hour)
	// ARI: as certmagic acts on it, one check interval (10 min for a
	// 90-day certificate) before the selected time or window start
	if at, by := renewalTime(long, "x", ri); by != "ari" || !at.Equal(ri.SuggestedWindow.Start.Add(-10*time.Minute)) {
		t.Errorf("with an ARI window: %s by %s", at, by)
	}
	ri.SelectedTime = nb.Add(10*24*time.Hour + time.Hour)
	if at, _ := renewalTime(long, "x", ri); !at.Equal(ri.SelectedTime.Add(-10 * time.Minute)) {
		t.Errorf("with an ARI selected time: %s", at)
	}
	// an ARI time later than the lifetime rule does not postpone it
	ri.SelectedTime = nb.Add(80 * 24 * time.Hour)
	if at, by := renewalTime(long, "x", ri); by != "lifetime" || !at.Equal(nb.Add(60*24*time.Hour)) {
		t.Errorf("with a late ARI selected time: %s by %s, want 60 days by lifetime", at, by)
	}
}
