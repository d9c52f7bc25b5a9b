// Package routing is the router's live view of where traffic can go: which
// service an access name means, and which of its instances are ready, each
// with its count of outstanding requests.
package routing

import (
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
	downUntil   atomic.Int64  // unix nanoseconds; 0 when healthy
	idHash      atomic.Uint64 // a hash of the instance ID, once a policy asked for it; 0 before
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
	policies  map[string]Policy      // by name
}

// NewTable returns an empty table with the default routing policies.
func NewTable() *Table {
	return &Table{byAccess: map[string]state.Service{}, byID: map[string]state.Service{}, endpoints: map[string][]*Endpoint{},
		policies: DefaultPolicies()}
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

// Pick returns a ready instance of a service for a request the policy
// knows nothing of: see Route.
func (t *Table) Pick(serviceID string, exclude ...string) (e *Endpoint, release func(), ok bool) {
	return t.Route(serviceID, Request{}, exclude...)
}

// Route returns a ready instance of a service for r, chosen by the
// service's routing policy, skipping the instance IDs in exclude and,
// while any other is healthy, instances marked failed. The caller must
// call release when the request ends.
func (t *Table) Route(serviceID string, r Request, exclude ...string) (e *Endpoint, release func(), ok bool) {
	t.mu.RLock()
	eps := t.endpoints[serviceID]
	p := t.policy(t.byID[serviceID].Routing())
	t.mu.RUnlock()
	r.ServiceID = serviceID
	return pick(eps, p, r, exclude)
}

// pick chooses among the usable instances of eps by p and counts the
// request on the one chosen.
func pick(eps []*Endpoint, p Policy, r Request, exclude []string) (e *Endpoint, release func(), ok bool) {
	cands := usable(eps, exclude, time.Now().UnixNano())
	if len(cands) == 0 {
		return nil, nil, false
	}
	best := p.Choose(cands, r)
	best.outstanding.Add(1)
	var once sync.Once
	return best, func() { once.Do(func() { best.outstanding.Add(-1) }) }, true
}

// usable returns the instances of eps not in exclude and, while any of
// those is healthy, not marked failed: eps itself when that is all of
// them, the common case, which costs no allocation.
func usable(eps []*Endpoint, exclude []string, now int64) []*Endpoint {
	healthy, all := 0, true
	for _, c := range eps {
		switch {
		case slices.Contains(exclude, c.Instance.ID):
			all = false
		case c.down(now):
			all = false
		default:
			healthy++
		}
	}
	if all {
		return eps
	}
	out := make([]*Endpoint, 0, len(eps))
	for _, c := range eps {
		if !slices.Contains(exclude, c.Instance.ID) && (healthy == 0 || !c.down(now)) {
			out = append(out, c)
		}
	}
	return out
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
