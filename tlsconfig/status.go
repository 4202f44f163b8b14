package tlsconfig

import (
	"sort"
	"sync"
	"time"
)

// Certificate states a name can be in, for /readyz and the operator view.
const (
	stateWaiting = "waiting" // no certificate yet; an order is pending or backing off
	stateReady   = "ready"   // a certificate is being served
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
}

// statusBook records each name's certificate state as events arrive.
type statusBook struct {
	mu    sync.Mutex
	names map[string]*NameStatus
}

func newStatusBook() *statusBook { return &statusBook{names: map[string]*NameStatus{}} }

func (b *statusBook) set(name, issuer, state string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.names[name]
	if st == nil {
		st = &NameStatus{Name: name}
		b.names[name] = st
	}
	if issuer != "" {
		st.Issuer = issuer
	}
	if st.State != state {
		st.Since = time.Now()
	}
	// a name that has a certificate stays ready while renewals fail
	if !(st.State == stateReady && state == stateWaiting) {
		st.State = state
	}
	if err != nil {
		st.LastError = err.Error()
	} else if state == stateReady {
		st.LastError = ""
		st.NextOrder = time.Time{}
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
	delete(b.names, name)
	b.mu.Unlock()
}

func (b *statusBook) fail(name string, err error) {
	b.mu.Lock()
	st := b.names[name]
	b.mu.Unlock()
	if st == nil {
		return
	}
	b.set(name, "", st.State, err)
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
// how many are configured, how many have no certificate yet, how many
// of those have no recorded reason (a first order still in flight), and
// up to limit of the waiting ones, sorted by name. It is polled often
// (every few seconds by Kubernetes), so it stays cheap at 100,000 names.
func (m *Manager) Readiness(limit int) (total, waiting, inFlight int, sample []NameStatus) {
	m.status.mu.Lock()
	defer m.status.mu.Unlock()
	total = len(m.status.names)
	for _, st := range m.status.names {
		if st.State == stateReady {
			continue
		}
		waiting++
		if st.LastError == "" {
			inFlight++
		}
		if len(sample) < limit {
			sample = append(sample, *st)
		}
	}
	sort.Slice(sample, func(i, j int) bool { return sample[i].Name < sample[j].Name })
	return total, waiting, inFlight, sample
}
