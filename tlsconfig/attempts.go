package tlsconfig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/gatehouse-proxy/gatehouse/routes"
)

// Orders for one name are paced by a record kept in storage, so the pace
// survives restarts: certmagic's backoff lives in memory, and a proxy in
// a crash loop would otherwise place a fresh order at every start and
// burn the CA's failed-validation limit (Let's Encrypt: 5 per name per
// hour) within minutes.
//
// The record is written before an order is placed (stage "ordering"),
// after it fails (the next order waits certmagic's retry interval for
// that many failures), reset when a certificate arrives, and read at
// every attempt: certmagic's retries in this process wait at least as
// long (same intervals), so only a new process is ever held back by it.
//
// An order that never finished (the process died; certmagic's lock on
// the name makes that the only way to find "ordering" at the start of
// another) may be taken over at once the first time, so a replica whose
// peer died mid-order finishes it without waiting; from the second
// unfinished order in a row on, those are paced like failures, so a
// process that dies in every order does not order at every start.

// Attempt is what gatehouse remembers about a name's last attempts to
// get a certificate.
type Attempt struct {
	Name string `json:"name"`
	// Failures counts consecutive failed orders; self-check failures
	// (which never reach the CA) are not counted.
	Failures int `json:"failures"`
	// Unfinished counts consecutive orders that never finished.
	Unfinished int `json:"unfinished,omitempty"`
	// LastOrder is when the last order was started.
	LastOrder time.Time `json:"last_order,omitzero"`
	// NextOrder is the earliest time of the next order.
	NextOrder time.Time `json:"next_order,omitzero"`
	// Stage says where the last attempt stopped: "self_check" (the name
	// does not lead to this gatehouse; nothing was ordered), "order"
	// (the CA refused or validation failed), "ordering" (an order is
	// running), or "unfinished" (an order never finished: the process
	// ordering it stopped).
	Stage     string    `json:"stage,omitempty"`
	LastError string    `json:"last_error,omitempty"`
	At        time.Time `json:"at"` // when this record was written
}

// attemptKey is the storage key of name's record.
func attemptKey(name string) string {
	return "gatehouse/attempts/" + strings.NewReplacer("*", "wildcard_", "/", "_", ":", "_").Replace(name) + ".json"
}

// LoadAttempt reads name's record from storage; nil when there is none
// (never attempted, or the last attempt succeeded).
func LoadAttempt(ctx context.Context, s certmagic.Storage, name string) (*Attempt, error) {
	b, err := s.Load(ctx, attemptKey(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var a Attempt
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("attempt record %s: %w", attemptKey(name), err)
	}
	return &a, nil
}

// orderBackoff is how long to wait before the next order after failures
// failed ones: certmagic's own retry intervals (async.go retryIntervals,
// unexported), so that within one process the record never holds back
// a retry certmagic schedules. failures == 0 is the hold while an order
// runs.
func orderBackoff(failures int) time.Duration {
	steps := []time.Duration{
		1 * time.Minute, 2 * time.Minute, 2 * time.Minute, 5 * time.Minute,
		10 * time.Minute, 10 * time.Minute, 10 * time.Minute,
		20 * time.Minute, 20 * time.Minute, 20 * time.Minute, 20 * time.Minute,
		30 * time.Minute, 30 * time.Minute, 30 * time.Minute, 30 * time.Minute, 30 * time.Minute, 30 * time.Minute,
		1 * time.Hour, 1 * time.Hour, 1 * time.Hour,
		2 * time.Hour, 2 * time.Hour, 3 * time.Hour, 3 * time.Hour,
		6 * time.Hour,
	}
	i := max(failures-1, 0)
	return steps[min(i, len(steps)-1)]
}

// attempts keeps every name's record, in memory and in storage.
type attempts struct {
	storage certmagic.Storage

	mu    sync.Mutex
	names map[string]*Attempt // loaded records; nil value: known to have none
}

func newAttempts(s certmagic.Storage) *attempts {
	return &attempts{storage: s, names: map[string]*Attempt{}}
}

// get returns a copy of name's record (zero value with Name set when
// there is none), loading it from storage once.
func (a *attempts) get(ctx context.Context, name string) (Attempt, error) {
	a.mu.Lock()
	rec, loaded := a.names[name]
	a.mu.Unlock()
	if !loaded {
		var err error
		if rec, err = LoadAttempt(ctx, a.storage, name); err != nil {
			return Attempt{Name: name}, err
		}
		a.mu.Lock()
		if cur, ok := a.names[name]; ok {
			rec = cur // written meanwhile
		} else {
			a.names[name] = rec
		}
		a.mu.Unlock()
	}
	if rec == nil {
		return Attempt{Name: name}, nil
	}
	return *rec, nil
}

// put stores rec in memory and in storage.
func (a *attempts) put(ctx context.Context, rec Attempt) error {
	rec.At = time.Now()
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.names[rec.Name] = &rec
	a.mu.Unlock()
	return a.storage.Store(ctx, attemptKey(rec.Name), b)
}

// clear forgets name's record: its certificate arrived.
func (a *attempts) clear(ctx context.Context, name string) error {
	a.mu.Lock()
	rec, loaded := a.names[name]
	a.names[name] = nil
	a.mu.Unlock()
	if loaded && rec == nil {
		return nil // known to have none
	}
	err := a.storage.Delete(ctx, attemptKey(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// snapshot returns every record loaded in this process.
func (a *attempts) snapshot() map[string]Attempt {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]Attempt, len(a.names))
	for n, r := range a.names {
		if r != nil {
			out[n] = *r
		}
	}
	return out
}

// setSelfCheck (re)configures the pre-order self-check from cfg.
// Called with m.mu held, or before m is shared.
func (m *Manager) setSelfCheck(cfg *routes.Config) {
	httpPort, tlsPort := 0, 0
	if m.opts.HTTPPort != 0 && hasChallenge(cfg, "http-01") {
		httpPort = cfg.ACME.HTTPChallengePort
	}
	if m.opts.TLSPort != 0 && hasChallenge(cfg, "tls-alpn-01") {
		tlsPort = cfg.ACME.TLSChallengePort
	}
	if m.selfCheck == nil {
		m.selfCheck = newSelfChecker(m.storage)
	}
	m.selfCheck.configure(cfg.ACME.Resolver, httpPort, tlsPort)
	m.dns01.configure(cfg)
	switch {
	case cfg.ACME.HasChallenge("dns-persist-01") && cfg.ACME.HasChallenge("dns-01") && cfg.ACME.DNS != nil:
		// either challenge will do: the persistent record, or a zone
		// that takes the dns-01 record
		m.selfCheck.configureDNS(func(ctx context.Context, name string) error {
			perr := m.persistCheck(ctx, name)
			if perr == nil {
				return nil
			}
			if err := m.dns01.probe(ctx, name); err != nil {
				return fmt.Errorf("%w; and %w", perr, err)
			}
			return nil
		}, cfg.ACME.DNSOnly())
	case cfg.ACME.HasChallenge("dns-persist-01"):
		m.selfCheck.configureDNS(m.persistCheck, cfg.ACME.DNSOnly())
	case cfg.ACME.WildcardByDNS():
		m.selfCheck.configureDNS(m.dns01.probe, cfg.ACME.DNSOnly())
	default:
		m.selfCheck.configureDNS(nil, false)
	}
	m.checkOn = cfg.ACME.SelfCheckOn()
}

// onACMEEvent is the event handler of ACME configs: it paces orders
// (the stored record and the self-check may hold one back) and keeps
// the record, then does what every config does (onEvent).
func (m *Manager) onACMEEvent(ctx context.Context, event string, data map[string]any) error {
	name, _ := data["identifier"].(string)
	switch event {
	case "cert_obtaining":
		if err := m.beforeOrder(ctx, name); err != nil {
			return err
		}
	case "cert_obtained":
		if err := m.attempts.clear(ctx, name); err != nil {
			m.log.Warn("could not clear the order record", "name", name, "key", attemptKey(name), "error", err)
		}
	case "cert_failed":
		err, _ := data["error"].(error)
		rec, lerr := m.attempts.get(ctx, name)
		if lerr != nil {
			m.log.Warn("order record unreadable; starting a new one", "name", name, "error", lerr)
		}
		rec.Failures++
		rec.Unfinished = 0
		rec.Stage = "order"
		if err != nil {
			rec.LastError = err.Error()
		}
		rec.NextOrder = time.Now().Add(orderBackoff(rec.Failures))
		if perr := m.attempts.put(ctx, rec); perr != nil {
			m.log.Error("could not record the failed order in storage", "name", name, "key", attemptKey(name), "error", perr)
		}
		m.status.setNext(name, rec.NextOrder)
	}
	return m.onEvent(ctx, event, data)
}

// beforeOrder decides whether an order for name may start now: not
// before the stored record allows, and only when the self-check finds
// that name leads here. It records the order as started (assuming it
// fails: a crash in the middle still counts) before allowing it.
func (m *Manager) beforeOrder(ctx context.Context, name string) error {
	rec, err := m.attempts.get(ctx, name)
	if err != nil {
		err = fmt.Errorf("not ordering a certificate for %s: its order record (storage key %s) cannot be read: %w", name, attemptKey(name), err)
		m.status.fail(name, err)
		return err
	}
	now := time.Now()
	if rec.Stage == "ordering" {
		// its process died mid-order (certmagic's lock on the name
		// keeps a live one from starting two)
		rec.Stage, rec.Unfinished = "unfinished", rec.Unfinished+1
		rec.LastError = fmt.Sprintf("an order started at %s never finished (the process ordering it stopped)", rec.LastOrder.Format(time.RFC3339))
		if rec.Unfinished > 1 {
			rec.NextOrder = maxTime(rec.NextOrder, rec.LastOrder.Add(orderBackoff(rec.Unfinished-1)))
		}
		if err := m.attempts.put(ctx, rec); err != nil {
			m.log.Warn("could not record the unfinished order", "name", name, "error", err)
		}
		m.log.Warn("taking over an order that never finished", "name", name, "started", rec.LastOrder, "unfinished_in_a_row", rec.Unfinished)
	}
	if now.Before(rec.NextOrder) {
		what := fmt.Sprintf("%d failed order(s) in a row", rec.Failures)
		if rec.Stage == "unfinished" {
			what = fmt.Sprintf("%d unfinished order(s) in a row", rec.Unfinished)
		}
		err := fmt.Errorf("holding the order for %s until %s: %s, the last at %s: %s (delete storage key %s to retry sooner)",
			name, rec.NextOrder.Format(time.RFC3339), what, rec.LastOrder.Format(time.RFC3339), rec.LastError, attemptKey(name))
		m.log.Warn("order held back", "name", name, "until", rec.NextOrder, "reason", err)
		m.status.fail(name, err)
		m.status.setNext(name, rec.NextOrder)
		metricOrderHeld.WithLabelValues("backoff").Inc()
		return err
	}
	m.mu.RLock()
	sc, on := m.selfCheck, m.checkOn
	m.mu.RUnlock()
	if on {
		if err := sc.check(ctx, name); err != nil {
			rec.Stage, rec.LastError = "self_check", err.Error()
			if perr := m.attempts.put(ctx, rec); perr != nil {
				m.log.Warn("could not record the self-check result", "name", name, "error", perr)
			}
			m.log.Error("not ordering: the self-check before the order failed (the name does not lead here, or its DNS zone is not ready); will check again with backoff", "name", name, "error", err)
			m.status.fail(name, err)
			metricOrderHeld.WithLabelValues("self_check").Inc()
			return err
		}
	}
	rec.Stage, rec.LastOrder = "ordering", now
	if err := m.attempts.put(ctx, rec); err != nil {
		err = fmt.Errorf("not ordering a certificate for %s: cannot record the order in storage first (storage key %s): %w", name, attemptKey(name), err)
		m.log.Error("order held back", "name", name, "error", err)
		m.status.fail(name, err)
		metricOrderHeld.WithLabelValues("storage").Inc()
		return err
	}
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
