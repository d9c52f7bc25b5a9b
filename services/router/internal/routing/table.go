// Package routing is the router's live view of where traffic can go: which
// service an access name means, and which of its instances are ready, each
// with its count of outstanding requests.
package routing

import (
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelport/modelport/libs/state"
)

// Endpoint is one ready instance, its load and its health.
type Endpoint struct {
	Instance    state.Instance
	outstanding atomic.Int64
	downUntil   atomic.Int64 // unix nanoseconds; 0 when healthy
}

// Outstanding returns the number of requests in flight to the instance.
func (e *Endpoint) Outstanding() int64 { return e.outstanding.Load() }

// MarkFailed takes the instance out of rotation for cooldown; it is tried
// again afterwards, or sooner if every other instance is out too.
func (e *Endpoint) MarkFailed(cooldown time.Duration) {
	e.downUntil.Store(time.Now().Add(cooldown).UnixNano())
}

func (e *Endpoint) down(now int64) bool { return e.downUntil.Load() > now }

// Table is safe for concurrent use. Writers are the bucket watchers;
// readers are requests.
type Table struct {
	mu        sync.RWMutex
	byAccess  map[string]state.Service
	byID      map[string]state.Service
	endpoints map[string][]*Endpoint // by service ID
}

// NewTable returns an empty table.
func NewTable() *Table {
	return &Table{byAccess: map[string]state.Service{}, byID: map[string]state.Service{}, endpoints: map[string][]*Endpoint{}}
}

// PutService adds or replaces a service.
func (t *Table) PutService(s state.Service) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.byID[s.ID]; ok && old.AccessName != s.AccessName {
		t.releaseName(old)
	}
	t.byID[s.ID] = s
	t.byAccess[s.AccessName] = s
}

// DeleteService removes a service; its name stops resolving at once.
func (t *Table) DeleteService(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.byID[id]; ok {
		t.releaseName(old)
		delete(t.byID, id)
	}
}

// releaseName drops old's access name unless another service holds it now.
func (t *Table) releaseName(old state.Service) {
	if cur, ok := t.byAccess[old.AccessName]; ok && cur.ID == old.ID {
		delete(t.byAccess, old.AccessName)
	}
}

// Resolve returns the service an access name means.
func (t *Table) Resolve(accessName string) (state.Service, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	s, ok := t.byAccess[accessName]
	return s, ok
}

// Services returns every service, in no particular order.
func (t *Table) Services() []state.Service {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]state.Service, 0, len(t.byID))
	for _, s := range t.byID {
		out = append(out, s)
	}
	return out
}

// PutInstance adds, updates or (when not ready) removes an instance.
func (t *Table) PutInstance(in state.Instance) {
	if in.Status != state.InstanceReady {
		t.DeleteInstance(in.ServiceID, in.ID)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	eps := t.endpoints[in.ServiceID]
	for i, e := range eps {
		if e.Instance.ID == in.ID {
			if e.Instance.Endpoint != in.Endpoint { // copy on write, as in DeleteInstance
				eps = slices.Clone(eps)
				eps[i] = &Endpoint{Instance: in}
				t.endpoints[in.ServiceID] = eps
			}
			return
		}
	}
	t.endpoints[in.ServiceID] = append(slices.Clip(eps), &Endpoint{Instance: in})
}

// DeleteInstance removes an instance. Requests in flight to it finish.
func (t *Table) DeleteInstance(serviceID, instanceID string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	eps := t.endpoints[serviceID]
	i := slices.IndexFunc(eps, func(e *Endpoint) bool { return e.Instance.ID == instanceID })
	if i < 0 {
		return
	}
	// Copy on write: Pick may hold the old slice.
	eps = slices.Delete(slices.Clone(eps), i, i+1)
	if len(eps) == 0 {
		delete(t.endpoints, serviceID)
	} else {
		t.endpoints[serviceID] = eps
	}
}

// Pick returns the ready instance of a service with the fewest
// outstanding requests, ties broken at random, skipping the instance IDs
// in exclude and, while any other is healthy, instances marked failed.
// The caller must call release when the request ends.
func (t *Table) Pick(serviceID string, exclude ...string) (e *Endpoint, release func(), ok bool) {
	t.mu.RLock()
	eps := t.endpoints[serviceID]
	t.mu.RUnlock()
	now := time.Now().UnixNano()
	healthy := slices.ContainsFunc(eps, func(c *Endpoint) bool { return !c.down(now) && !slices.Contains(exclude, c.Instance.ID) })
	var best *Endpoint
	ties := 0
	for _, c := range eps {
		if slices.Contains(exclude, c.Instance.ID) || healthy && c.down(now) {
			continue
		}
		switch {
		case best == nil || c.Outstanding() < best.Outstanding():
			best, ties = c, 1
		case c.Outstanding() == best.Outstanding():
			ties++
			if rand.IntN(ties) == 0 { // reservoir sampling over the tied
				best = c
			}
		}
	}
	if best == nil {
		return nil, nil, false
	}
	best.outstanding.Add(1)
	var once sync.Once
	return best, func() { once.Do(func() { best.outstanding.Add(-1) }) }, true
}

// InstanceLoad is one ready instance's requests in flight.
type InstanceLoad struct {
	Service     state.Service
	InstanceID  string
	Outstanding int64
}

// Loads returns the requests in flight to every ready instance.
func (t *Table) Loads() []InstanceLoad {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var out []InstanceLoad
	for id, eps := range t.endpoints {
		svc := t.byID[id]
		for _, e := range eps {
			out = append(out, InstanceLoad{Service: svc, InstanceID: e.Instance.ID, Outstanding: e.Outstanding()})
		}
	}
	return out
}
