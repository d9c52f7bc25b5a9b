// Package routing is the router's live view of where traffic can go: which
// service an access name means, and which of its instances are ready, each
// with its count of outstanding requests.
package routing

import (
	"container/list"
	"context"
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
	waiting   map[string]*queue      // by service ID: requests held for an instance
	// SpreadWait is how long requests held for a service starting from
	// zero are kept for instances still to come, when fewer are up than
	// the service wants, before the ones up get them all. Set it before
	// the table is used.
	SpreadWait time.Duration
}

// NewTable returns an empty table with the default routing policies.
func NewTable() *Table {
	return &Table{byAccess: map[string]state.Service{}, byID: map[string]state.Service{}, endpoints: map[string][]*Endpoint{},
		policies: DefaultPolicies(), waiting: map[string]*queue{}, SpreadWait: time.Second}
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
	t.handOut(in.ServiceID, false)
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

// queue is the requests held for one service's instances, first come
// first served.
type queue struct {
	waiters list.List // of *waiter
	timer   *time.Timer
}

// waiter is one held request; its grant is sent once, when it is handed an
// instance chosen for r by the service's routing policy.
type waiter struct {
	r     Request
	grant chan grant
	elem  *list.Element
}

type grant struct {
	e       *Endpoint
	release func()
}

// Acquire returns a ready instance of a service for r as Route does, or,
// when it has none, holds the request until one comes up or ctx ends
// (ctx's error). Held requests are served in the order they came, and
// none is passed by a later request. They are woken by an instance's
// arrival, not by polling: when the service has all the instances it
// wants, every held request is handed one, each chosen for its request by
// the service's routing policy; while it has fewer, each arrival takes its
// share of the held requests and the rest wait for the next, or
// SpreadWait, so that a service starting from zero spreads them over the
// instances that come up. waiting, when not nil, is called once if the
// request is held. The caller must call release when the request ends.
func (t *Table) Acquire(ctx context.Context, serviceID string, r Request, waiting func()) (e *Endpoint, release func(), err error) {
	r.ServiceID = serviceID
	t.mu.Lock()
	q := t.waiting[serviceID]
	if q == nil || q.waiters.Len() == 0 {
		if e, release, ok := pick(t.endpoints[serviceID], t.policy(t.byID[serviceID].Routing()), r, nil); ok {
			t.mu.Unlock()
			return e, release, nil
		}
	}
	if q == nil {
		q = &queue{}
		t.waiting[serviceID] = q
	}
	w := &waiter{r: r, grant: make(chan grant, 1)}
	w.elem = q.waiters.PushBack(w)
	t.mu.Unlock()
	if waiting != nil {
		waiting()
	}
	select {
	case g := <-w.grant:
		return g.e, g.release, nil
	case <-ctx.Done():
	}
	t.mu.Lock()
	if w.elem != nil { // still held: leave the queue
		q.waiters.Remove(w.elem)
		w.elem = nil
		t.dropQueue(serviceID, q)
		t.mu.Unlock()
		return nil, nil, ctx.Err()
	}
	t.mu.Unlock()
	g := <-w.grant // handed an instance as ctx ended: give it back
	g.release()
	return nil, nil, ctx.Err()
}

// handOut gives held requests for a service the instances it has: all of
// them when all is set or the service has all the instances it wants,
// else this arrival's share, arming SpreadWait for the rest. t.mu must be
// held.
func (t *Table) handOut(serviceID string, all bool) {
	q := t.waiting[serviceID]
	eps := t.endpoints[serviceID]
	if q == nil || q.waiters.Len() == 0 || len(eps) == 0 {
		return
	}
	n := q.waiters.Len()
	if want := t.byID[serviceID].Instances; !all && want > len(eps) {
		// This arrival and each still to come get an equal share.
		n = (n + want - len(eps)) / (want - len(eps) + 1)
	}
	p := t.policy(t.byID[serviceID].Routing())
	for ; n > 0 && q.waiters.Len() > 0; n-- {
		w := q.waiters.Front().Value.(*waiter)
		e, release, ok := pick(eps, p, w.r, nil)
		if !ok {
			break
		}
		q.waiters.Remove(w.elem)
		w.elem = nil
		w.grant <- grant{e, release}
	}
	if q.waiters.Len() > 0 && q.timer == nil {
		q.timer = time.AfterFunc(t.SpreadWait, func() {
			t.mu.Lock()
			defer t.mu.Unlock()
			q.timer = nil
			t.handOut(serviceID, true)
		})
	}
	t.dropQueue(serviceID, q)
}

// dropQueue forgets an empty queue. t.mu must be held.
func (t *Table) dropQueue(serviceID string, q *queue) {
	if q.waiters.Len() > 0 || t.waiting[serviceID] != q {
		return
	}
	if q.timer != nil {
		q.timer.Stop()
		q.timer = nil
	}
	delete(t.waiting, serviceID)
}

// Waiting returns how many requests are held for a service's instances.
func (t *Table) Waiting(serviceID string) int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if q := t.waiting[serviceID]; q != nil {
		return q.waiters.Len()
	}
	return 0
}
