package tlsconfig

import (
	"sort"
	"sync"
	"time"
)

// Certificate states a name can be in, for /readyz and the operator view.
const (
	stateWaiting = "waiting" // no certificate yet; an order is pending or backing off
	stateReady   = "ready"   // a certificate is being served, or one in storage was checked and is usable
	// stateStored: storage holds a certificate for the name, not read yet
	// (lazy loading, lazy.go): it is loaded on the name's first handshake
	// or checked by the background walk, whichever comes first. Until
	// then gatehouse does not know whether it has expired; /readyz counts
	// these names apart (stored_unchecked) instead of calling them ready.
	stateStored = "stored"
	// stateExpired: the only certificate held for the name has expired;
	// it is still served (better than none for clients with a skewed
	// clock) while its renewal runs, and /readyz lists the name as waiting.
	stateExpired = "expired"
)

// NameStatus is what gatehouse knows about one configured name.
type NameStatus struct {
	Name      string `json:"name"`
	Issuer    string `json:"issuer"` // acme, manual, internal
	State     string `json:"state"`
	LastError string `json:"last_error,omitempty"`
	// NextOrder is the earliest next order after failures (the stored
	// backoff, attempts.go).
	NextOrder time.Time `json:"next_order,omitzero"`
	Since     time.Time `json:"since"`
	// FailedAt is when LastError was recorded (the status page lists
	// the most recent failures first).
	FailedAt time.Time `json:"failed_at,omitzero"`
}

// statusBook records each name's certificate state as events arrive.
// It keeps the names without a usable certificate (waiting, expired) in
// a set of their own and counts them, so /readyz, polled every few
// seconds, costs O(sample) and not O(names) at 100,000 names.
type statusBook struct {
	mu       sync.Mutex
	names    map[string]*NameStatus
	waiting  map[string]*NameStatus // State waiting or expired
	inFlight int                    // of waiting: no LastError yet
	failing  map[string]*NameStatus // State ready with a LastError: renewals failing
	stored   int                    // State stored
	// ordering: names with an order attempt running (certmagic's
	// cert_obtaining seen, cert_obtained/cert_failed not yet), and
	// since when; overview.go.
	ordering map[string]time.Time
}

func newStatusBook() *statusBook {
	return &statusBook{names: map[string]*NameStatus{}, waiting: map[string]*NameStatus{}, failing: map[string]*NameStatus{}}
}

func isWaiting(state string) bool { return state == stateWaiting || state == stateExpired }

// unaccount and account keep the counters in step; called with b.mu held
// around every change of a NameStatus.
func (b *statusBook) unaccount(st *NameStatus) {
	if isWaiting(st.State) {
		delete(b.waiting, st.Name)
		if st.LastError == "" {
			b.inFlight--
		}
	}
	if st.State == stateStored {
		b.stored--
	}
	delete(b.failing, st.Name)
}

func (b *statusBook) account(st *NameStatus) {
	if isWaiting(st.State) {
		b.waiting[st.Name] = st
		if st.LastError == "" {
			b.inFlight++
		}
	}
	if st.State == stateStored {
		b.stored++
	}
	if st.State == stateReady && st.LastError != "" {
		b.failing[st.Name] = st
	}
}

func (b *statusBook) set(name, issuer, state string, err error) {
	b.put(name, issuer, state, err, false)
}

// reset sets name's state even from ready: for a name found to have no
// usable certificate after all (a stored one that fails to load).
func (b *statusBook) reset(name, state string, err error) {
	b.put(name, "", state, err, true)
}

func (b *statusBook) put(name, issuer, state string, err error, force bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.names[name]
	if st == nil {
		st = &NameStatus{Name: name}
		b.names[name] = st
	} else {
		b.unaccount(st)
	}
	defer b.account(st)
	if issuer != "" {
		st.Issuer = issuer
	}
	// a name that has a certificate stays ready while renewals fail
	if st.State == stateReady && state == stateWaiting && !force {
		state = stateReady
	}
	if st.State != state {
		st.Since = time.Now()
	}
	st.State = state
	if err != nil {
		st.LastError = err.Error()
		st.FailedAt = time.Now()
	} else if state == stateReady || state == stateStored {
		st.LastError = ""
		st.NextOrder = time.Time{}
		st.FailedAt = time.Time{}
	}
}

// setNext records when name's next order may start.
func (b *statusBook) setNext(name string, t time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if st := b.names[name]; st != nil {
		st.NextOrder = t
	}
}

// remove forgets a name no route serves any more.
func (b *statusBook) remove(name string) {
	b.mu.Lock()
	if st := b.names[name]; st != nil {
		b.unaccount(st)
		delete(b.names, name)
	}
	b.mu.Unlock()
}

func (b *statusBook) fail(name string, err error) {
	b.mu.Lock()
	st := b.names[name]
	state := ""
	if st != nil {
		state = st.State
	}
	b.mu.Unlock()
	if st == nil {
		return
	}
	b.set(name, "", state, err)
}

// state returns name's current state ("" when unknown).
func (b *statusBook) state(name string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if st := b.names[name]; st != nil {
		return st.State
	}
	return ""
}

// Status returns every configured name's state, sorted by name.
func (m *Manager) Status() []NameStatus {
	m.status.mu.Lock()
	defer m.status.mu.Unlock()
	out := make([]NameStatus, 0, len(m.status.names))
	for _, st := range m.status.names {
		out = append(out, *st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Readiness summarizes the names for /readyz without copying them all:
// how many are configured, how many have no usable certificate (none
// yet, or an expired one), how many of those have no recorded reason (a
// first order still in flight), and up to limit of the waiting ones,
// sorted by name. It is polled often (every few seconds by Kubernetes),
// so it costs O(limit), not O(names).
func (m *Manager) Readiness(limit int) (total, waiting, inFlight int, sample []NameStatus) {
	b := m.status
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, st := range b.waiting {
		if len(sample) >= limit {
			break
		}
		sample = append(sample, *st)
	}
	sort.Slice(sample, func(i, j int) bool { return sample[i].Name < sample[j].Name })
	return len(b.names), len(b.waiting), b.inFlight, sample
}

// Failing returns how many names serve a valid certificate while their
// renewal fails, and up to limit of them sorted by name, for /readyz:
// ready, but with the reason an operator has until expiry to act on.
func (m *Manager) Failing(limit int) (n int, sample []NameStatus) {
	b := m.status
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, st := range b.failing {
		if len(sample) >= limit {
			break
		}
		sample = append(sample, *st)
	}
	sort.Slice(sample, func(i, j int) bool { return sample[i].Name < sample[j].Name })
	return len(b.failing), sample
}

// StoredUnchecked is how many names have a certificate in storage that
// gatehouse has neither loaded nor checked yet (lazy.go): they are
// served from storage on their first handshake, but whether the stored
// certificate is still valid is not known until the background walk or
// that handshake reads it. /readyz reports the count.
func (m *Manager) StoredUnchecked() int {
	m.status.mu.Lock()
	defer m.status.mu.Unlock()
	return m.status.stored
}
