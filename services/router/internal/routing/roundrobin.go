package routing

import (
	"sync"
	"sync/atomic"
)

// RoundRobin sends a service's requests to its instances in turn,
// whatever their load. It is safe for concurrent use.
type RoundRobin struct {
	turns sync.Map // service ID → *atomic.Uint64
}

// NewRoundRobin returns a RoundRobin.
func NewRoundRobin() *RoundRobin { return &RoundRobin{} }

// Choose implements Policy.
func (rr *RoundRobin) Choose(cands []*Endpoint, r Request) *Endpoint {
	v, ok := rr.turns.Load(r.ServiceID)
	if !ok {
		v, _ = rr.turns.LoadOrStore(r.ServiceID, new(atomic.Uint64))
	}
	n := v.(*atomic.Uint64).Add(1) - 1
	return cands[n%uint64(len(cands))]
}
