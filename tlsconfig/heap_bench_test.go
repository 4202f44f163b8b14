package tlsconfig

import (
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/gatehouse-proxy/gatehouse/internal/acmetest"
	"github.com/gatehouse-proxy/gatehouse/internal/testkit"
	"github.com/gatehouse-proxy/gatehouse/routes"
)

// BenchmarkHeapPerLoadedName reports the heap a name costs once its
// certificate is loaded (after its first handshake), over 2,000 names:
// heap-B/name is the live heap after loading every name less the live
// heap with every name indexed and none loaded, divided by the names.
// GATEHOUSE_HEAP_PROFILE=FILE writes the heap profile with every name
// loaded, and FILE.indexed with none loaded (pprof -diff_base=FILE.indexed
// FILE shows what loading cost); GATEHOUSE_HEAP_NAMES=N loads N names instead of 2,000 (the
// per-name figure settles above a few thousand names).
func BenchmarkHeapPerLoadedName(b *testing.B) {
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("GATEHOUSE_HEAP_NAMES")); err == nil && v > 0 {
		n = v
	}
	dir := b.TempDir()
	ca, err := acmetest.NewTestCA("heap CA")
	if err != nil {
		b.Fatal(err)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("h%05d.heap.test", i)
	}
	cfg := manyNamesConfig(b, fmt.Sprintf("[storage]\ndir = %q\n", dir), names)
	fst := &certmagic.FileStorage{Path: dir}
	issuerKey := (&certmagic.ACMEIssuer{CA: cfg.ACME.Directory}).IssuerKey()
	for _, name := range names {
		plantWith(b, fst, issuerKey, name, ca, 90*24*time.Hour) // as Let's Encrypt issues
	}
	if os.Getenv("GATEHOUSE_HEAP_PROFILE") != "" {
		// every allocation sampled: the per-name figures are a few
		// hundred bytes each, below the default 512 KiB sampling
		defer func(r int) { runtime.MemProfileRate = r }(runtime.MemProfileRate)
		runtime.MemProfileRate = 1
	}
	for b.Loop() {
		// ReleaseIdle as gatehouse runs (an hour: nothing is released
		// during the benchmark, but each name's last use is recorded)
		m, err := New(cfg, Options{Logger: quietLogger(b), Storage: fst})
		if err != nil {
			b.Fatal(err)
		}
		table := routes.NewTable(cfg)
		if err := m.Apply(table); err != nil {
			b.Fatal(err)
		}
		testkit.WaitFor(b, time.Minute, "names indexed", func() error {
			if !m.stored.pending(names[n-1]) {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		e := table.Lookup(names[0])
		before := liveHeap()
		writeHeapProfile(os.Getenv("GATEHOUSE_HEAP_PROFILE"), ".indexed")
		debug.FreeOSMemory()
		rss0 := rssBytes()
		conn, peer := net.Pipe()
		for _, name := range names {
			if _, err := m.GetCertificate(e, &tls.ClientHelloInfo{ServerName: name, Conn: conn}); err != nil {
				b.Fatalf("%s: %v", name, err)
			}
		}
		// RSS as the loads left it (the GC's headroom and the garbage
		// of the loads and of the background walk included), then
		// after a collection that returns freed pages (what
		// cmd/gatehouse's memory trim does once traffic pauses)
		rssLoaded := rssBytes()
		after := liveHeap()
		debug.FreeOSMemory()
		rssTrimmed := rssBytes()
		b.ReportMetric(float64(after-before)/float64(n), "heap-B/name")
		if rss0 > 0 {
			b.ReportMetric(float64(rssLoaded-rss0)/float64(n), "rss-B/name")
			b.ReportMetric(float64(rssTrimmed-rss0)/float64(n), "rss-trimmed-B/name")
		}
		writeHeapProfile(os.Getenv("GATEHOUSE_HEAP_PROFILE"), "")
		// one scrape with a series per name, and one above
		// [listen] metrics_name_limit (no name needs attention here)
		every, limitOne := 0, 1
		cfg.Listen.MetricsNameLimit = &every
		alloc, size := scrapeCost(b)
		b.ReportMetric(float64(alloc)/float64(n), "scrape-alloc-B/name")
		b.ReportMetric(float64(size)/float64(n), "scrape-text-B/name")
		cfg.Listen.MetricsNameLimit = &limitOne
		alloc, size = scrapeCost(b)
		cfg.Listen.MetricsNameLimit = nil
		b.ReportMetric(float64(alloc)/float64(n), "scrape-limited-alloc-B/name")
		b.ReportMetric(float64(size)/float64(n), "scrape-limited-text-B/name")
		conn.Close()
		peer.Close()
		m.Close()
	}
}

// scrapeCost returns the bytes one scrape of this package's metrics
// allocates (gathering and text encoding) and the size of its text.
func scrapeCost(b *testing.B) (alloc, size int64) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(Collectors()...)
	var w countingWriter
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	start := ms.TotalAlloc
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	enc := expfmt.NewEncoder(&w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			b.Fatal(err)
		}
	}
	runtime.ReadMemStats(&ms)
	return int64(ms.TotalAlloc - start), w.n
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// writeHeapProfile writes the heap profile to path+suffix, if path is set.
func writeHeapProfile(path, suffix string) {
	if path == "" {
		return
	}
	if f, err := os.Create(path + suffix); err == nil {
		_ = pprof.WriteHeapProfile(f)
		f.Close()
	}
}

// rssBytes is the process's resident set (Linux; 0 elsewhere).
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func liveHeap() int64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
