package routes

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// Error is one problem in a config file, with the line it is on.
type Error struct {
	File string
	Line int // 0 when the problem has no single line (a missing key)
	Msg  string

	missing string // key path a "missing" error is about, e.g. "acme.email"
	suggest string // key path an unknown-key error suggests instead
	typeErr bool   // a value of the wrong type (types.go): other errors on its line follow from it
}

func (e *Error) Error() string {
	switch {
	case e.File != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	case e.File != "":
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	case e.Line > 0:
		return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
	}
	return e.Msg
}

// Errors is every problem found in a config, in line order. Validation
// does not stop at the first one: a user fixes them all in one pass.
type Errors []*Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Load reads, decodes and validates the config file at path.
// The error, if any, is an Errors listing every problem found.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Errors{{File: path, Msg: fmt.Sprintf("cannot read config: %v", errors.Unwrap(err))}}
	}
	cfg, err := Parse(data)
	if err != nil {
		var es Errors
		if errors.As(err, &es) {
			for _, e := range es {
				e.File = path
			}
		}
		return nil, err
	}
	cfg.Path = path
	return cfg, nil
}

// Parse decodes and validates a config held in memory.
func Parse(data []byte) (*Config, error) {
	idx := indexLines(data)
	// The shape of every value first (types.go): a wrong type gets its
	// line and the line to write, and is dropped so that the rest of the
	// file is still checked.
	var raw map[string]any
	if _, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, Errors{{Line: pe.Position.Line, Msg: pe.Message}}
		}
		return nil, Errors{{Msg: err.Error()}}
	}
	typeErrs := checkTypes(raw, idx)
	decodeFrom := data
	if len(typeErrs) > 0 {
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(raw); err != nil {
			return nil, typeErrs
		}
		decodeFrom = buf.Bytes()
	}
	var cfg Config
	md, err := toml.NewDecoder(bytes.NewReader(decodeFrom)).Decode(&cfg)
	if err != nil {
		if len(typeErrs) > 0 {
			return nil, typeErrs
		}
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, Errors{{Line: pe.Position.Line, Msg: pe.Message}}
		}
		return nil, Errors{{Msg: err.Error()}}
	}
	errs := append(typeErrs, unknownKeys(md, idx)...)
	if !md.IsDefined("listen", "http") {
		cfg.Listen.HTTP = ":80"
	}
	if !md.IsDefined("listen", "admin") {
		cfg.Listen.Admin = "127.0.0.1:2019"
	}
	cfg.ECH.Table = md.IsDefined("ech")
	for i := range cfg.Routes {
		cfg.Routes[i].Line = idx.table(fmt.Sprintf("route.%d", i))
	}
	return cfg.finish(idx, errs)
}

// unknownKeys reports each key the decoder did not use, once per line
// it is on. The keys inside an unknown table are not listed: the table's
// name is the mistake ([[routes]] for [[route]]).
func unknownKeys(md toml.MetaData, idx lineIndex) Errors {
	unknown := map[string]bool{}
	var keys []toml.Key
	for _, k := range md.Undecoded() {
		// Keys inside [[acme.issuer]] are decoded by IssuerSpec itself.
		if len(k) > 2 && k[0] == "acme" && k[1] == "issuer" {
			continue
		}
		if !unknown[k.String()] {
			unknown[k.String()] = true
			keys = append(keys, k)
		}
	}
	var errs Errors
	seen := map[string]bool{}
	for _, k := range keys {
		inUnknown := false
		for i := 1; i < len(k); i++ {
			inUnknown = inUnknown || unknown[k[:i].String()]
		}
		if inUnknown {
			continue
		}
		lines := idx.find(k)
		if len(lines) == 0 {
			lines = []int{0}
		}
		msg, suggest := unknownKeyMsg(k, idx.tableSpelling(k.String()))
		for _, ln := range lines {
			if id := fmt.Sprint(ln, msg); !seen[id] {
				seen[id] = true
				errs = append(errs, &Error{Line: ln, Msg: msg, suggest: suggest})
			}
		}
	}
	return errs
}

// finish applies environment overrides and defaults, then validates.
func (cfg *Config) finish(idx lineIndex, errs Errors) (*Config, error) {
	cfg.applyEnv()
	cfg.ApplyDefaults()
	errs = append(errs, cfg.validate(idx)...)
	// A misspelt key also makes the key it meant missing: report the
	// typo alone, it is the one thing to fix.
	suggested := map[string]bool{}
	for _, e := range errs {
		if e.suggest != "" {
			suggested[e.suggest] = true
		}
	}
	kept := errs[:0]
	for _, e := range errs {
		if e.missing == "" || !suggested[e.missing] {
			kept = append(kept, e)
		}
	}
	errs = kept
	// A value of the wrong type was dropped to check the rest: what
	// validation then says on its line (hosts missing) follows from it.
	typeLines := map[int]bool{}
	for _, e := range errs {
		if e.typeErr && e.Line > 0 {
			typeLines[e.Line] = true
		}
	}
	kept = errs[:0]
	for _, e := range errs {
		if e.typeErr || !typeLines[e.Line] {
			kept = append(kept, e)
		}
	}
	errs = kept
	if len(errs) > 0 {
		sort.SliceStable(errs, func(i, j int) bool { return errs[i].Line < errs[j].Line })
		return nil, errs
	}
	return cfg, nil
}

// known lists the keys of each table, for "did you mean" hints.
var known = map[string][]string{
	"":          {"listen", "acme", "storage", "on_demand", "log", "timeouts", "route"},
	"listen":    {"https", "http", "admin", "admin_auth", "proxy_protocol_from", "metrics_name_limit"},
	"acme":      {"email", "directory", "ca_root", "challenges", "profile", "issuer", "self_check", "resolver", "http_challenge_port", "tls_challenge_port", "dns"},
	"acme.dns":  {"provider", "server", "tsig_key", "tsig_secret", "tsig_algorithm", "zone", "command"},
	"storage":   {"backend", "dir", "endpoints", "prefix", "username", "password", "ca_cert", "cert", "key", "lock_ttl", "sync_interval", "health_interval"},
	"on_demand": {"ask", "ask_timeout", "rate", "max_concurrent", "deny_cache"},
	"log":       {"format", "level", "access"},
	"timeouts":  {"read_header", "idle", "upstream_dial", "upstream_response_header", "handshake", "shutdown_drain", "client_body", "send"},
	"route": {"hosts", "upstream", "upstreams", "mode", "cert", "key", "tls", "profile", "alpn",
		"proxy_protocol", "hsts", "upstream_ca", "balance", "health_path", "health_interval", "health_timeout"},
}

// unknownKeyMsg says what is unknown; spelling is "[x]" or "[[x]]" when
// k is a table header in the file, else "".
func unknownKeyMsg(k toml.Key, spelling string) (msg, suggest string) {
	table := strings.Join(k[:len(k)-1], ".")
	name := k[len(k)-1]
	where := "at the top level"
	if table != "" {
		where = "in [" + table + "]"
	}
	best := closest(name, known[table])
	if best != "" {
		suggest = strings.TrimPrefix(table+"."+best, ".")
	}
	if spelling != "" {
		msg = "unknown table " + spelling
		if best != "" {
			want := strings.Replace(spelling, name, best, 1)
			if best == "route" {
				want = "[[route]]" // the one array of tables
			}
			msg += fmt.Sprintf(" (did you mean %s?)", want)
		}
		return msg, suggest
	}
	msg = fmt.Sprintf("unknown key %q %s", name, where)
	if best != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", best)
	}
	return msg, suggest
}

// closest returns the known key nearest to name by edit distance, if near enough.
func closest(name string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(name, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// lineIndex remembers the line of every table header and key in a TOML
// file, so validation can point at the line a problem is on. The TOML
// decoder keeps positions to itself, so this is a light second pass: it
// understands [table], [[array]] and key = value lines, which is all a
// gatehouse config uses.
type lineIndex struct {
	keys   map[string]int // "route.1.hosts" -> line
	tables map[string]int // "route.1" -> line
}

func indexLines(data []byte) lineIndex {
	idx := lineIndex{keys: map[string]int{}, tables: map[string]int{}}
	counts := map[string]int{}
	prefix := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#':
		case strings.HasPrefix(line, "[["):
			name := strings.TrimSpace(strings.Trim(strings.SplitN(line, "]]", 2)[0], "[ "))
			i := counts[name]
			counts[name]++
			prefix = fmt.Sprintf("%s.%d", name, i)
			idx.tables[prefix] = n
		case line[0] == '[':
			prefix = strings.TrimSpace(strings.Trim(strings.SplitN(line, "]", 2)[0], "[ "))
			idx.tables[prefix] = n
		default:
			eq := strings.IndexByte(line, '=')
			if eq <= 0 {
				continue
			}
			key := strings.Trim(strings.TrimSpace(line[:eq]), `"'`)
			full := key
			if prefix != "" {
				full = prefix + "." + key
			}
			if _, dup := idx.keys[full]; !dup {
				idx.keys[full] = n
			}
		}
	}
	return idx
}

// key returns the line of a key path such as "route.0.hosts", or 0.
func (idx lineIndex) key(path string) int {
	if n, ok := idx.keys[path]; ok {
		return n
	}
	if n, ok := idx.tables[path]; ok {
		return n
	}
	return idx.table(path[:max(strings.LastIndexByte(path, '.'), 0)])
}

// table returns the line of a table header such as "route.0", or 0.
func (idx lineIndex) table(path string) int { return idx.tables[path] }

// find returns every line where an undecoded key k appears. Keys of
// arrays of tables carry no index, so each element is searched.
func (idx lineIndex) find(k toml.Key) []int {
	want := k.String()
	var lines []int
	for path, n := range idx.keys {
		if stripIndexes(path) == want {
			lines = append(lines, n)
		}
	}
	for path, n := range idx.tables {
		if stripIndexes(path) == want {
			lines = append(lines, n)
		}
	}
	sort.Ints(lines)
	return lines
}

// tableSpelling returns how the file writes table path (no indexes):
// "[[name]]" for an array of tables, "[name]" for a table, "" when it
// is not a table header in the file.
func (idx lineIndex) tableSpelling(path string) string {
	spelling := ""
	for p := range idx.tables {
		if stripIndexes(p) != path {
			continue
		}
		last := p[strings.LastIndexByte(p, '.')+1:]
		if strings.Trim(last, "0123456789") == "" {
			return "[[" + stripIndexes(p) + "]]"
		}
		spelling = "[" + p + "]"
	}
	return spelling
}

func stripIndexes(path string) string {
	parts := strings.Split(path, ".")
	out := parts[:0]
	for _, p := range parts {
		if p != "" && strings.Trim(p, "0123456789") == "" {
			continue
		}
		out = append(out, p)
	}
	return strings.Join(out, ".")
}
