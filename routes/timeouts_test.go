package routes

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The README's [timeouts] block says "defaults shown": each value there
// is what a config without that key gets, through the one accessor
// every package uses; a key set in the config wins.
func TestTimeoutDefaultsAsREADMEShows(t *testing.T) {
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(raw), "[timeouts]                  # all optional; defaults shown\n")
	if !ok {
		t.Fatal("README.md has no [timeouts] block with its defaults")
	}
	block, _, _ = strings.Cut(block, "\n\n")
	var zero Timeouts
	got := map[string]time.Duration{
		"handshake": zero.HandshakeTimeout(), "read_header": zero.ReadHeaderTimeout(), "idle": zero.IdleTimeout(),
		"upstream_dial": zero.UpstreamDialTimeout(), "upstream_response_header": zero.UpstreamHeaderTimeout(),
		"client_body": zero.ClientBodyTimeout(), "send": zero.SendTimeout(), "shutdown_drain": zero.ShutdownDrainTimeout(),
	}
	line := regexp.MustCompile(`^(\w+) = "([^"]+)"`)
	seen := 0
	for _, l := range strings.Split(block, "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		want, err := time.ParseDuration(m[2])
		if err != nil {
			t.Fatalf("README: %s = %q: %v", m[1], m[2], err)
		}
		def, ok := got[m[1]]
		if !ok {
			t.Errorf("README shows a default for %s, which has no accessor here", m[1])
			continue
		}
		seen++
		if def != want {
			t.Errorf("%s: default %v, README shows %v", m[1], def, want)
		}
	}
	if seen != len(got) {
		t.Errorf("README shows %d of the %d [timeouts] defaults", seen, len(got))
	}
	set := Timeouts{Handshake: Duration(3 * time.Second), Idle: Duration(time.Second)}
	if set.HandshakeTimeout() != 3*time.Second || set.IdleTimeout() != time.Second {
		t.Errorf("a configured timeout does not win: handshake %v idle %v", set.HandshakeTimeout(), set.IdleTimeout())
	}
}
