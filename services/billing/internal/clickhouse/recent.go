package clickhouse

import (
	"sync"

	"github.com/modelport/modelport/libs/events"
)

// recentCapacity is how many usage event IDs a Store remembers having
// stored: at 50,000 events a second, the last few seconds, which is when
// a duplicate publish or a batch stored again after an error usually
// comes; at ordinary rates, much longer. About 10 MB.
const recentCapacity = 1 << 17

// recentIDs remembers the last IDs a Store stored, oldest forgotten
// first, and the IDs inserts in progress are storing, so that two
// batches stored at once (billing's inserters) do not both insert an
// event and its duplicate. It is safe for concurrent use.
type recentIDs struct {
	mu      sync.Mutex
	set     map[string]struct{}
	ring    []string // ring[next] is the oldest once the ring is full
	next    int
	claimed map[string]struct{} // being stored by an insert in progress
}

func newRecentIDs(n int) *recentIDs {
	return &recentIDs{set: make(map[string]struct{}, n), ring: make([]string, 0, n), claimed: map[string]struct{}{}}
}

// claim returns, in a new slice, the events of batch whose IDs are
// neither stored lately nor being stored by another insert, each ID once,
// and marks them as being stored. The caller then calls stored or
// release with what it returned. Leaving out an event another insert is
// storing is safe: if that insert fails, its own copy of the event is
// retried.
func (r *recentIDs) claim(batch []events.RequestCompletedV1) []events.RequestCompletedV1 {
	out := make([]events.RequestCompletedV1, 0, len(batch))
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range batch {
		if _, ok := r.set[e.ID]; ok {
			continue
		}
		if _, ok := r.claimed[e.ID]; ok {
			continue
		}
		r.claimed[e.ID] = struct{}{}
		out = append(out, e)
	}
	return out
}

// release gives up the claims on claimed, whose insert failed.
func (r *recentIDs) release(claimed []events.RequestCompletedV1) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range claimed {
		delete(r.claimed, e.ID)
	}
}

// stored remembers the IDs of claimed, now in ClickHouse, forgetting the
// oldest beyond its capacity, and gives up their claims.
func (r *recentIDs) stored(claimed []events.RequestCompletedV1) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range claimed {
		delete(r.claimed, e.ID)
		if _, ok := r.set[e.ID]; ok {
			continue
		}
		r.set[e.ID] = struct{}{}
		if len(r.ring) < cap(r.ring) {
			r.ring = append(r.ring, e.ID)
			continue
		}
		delete(r.set, r.ring[r.next])
		r.ring[r.next] = e.ID
		r.next = (r.next + 1) % len(r.ring)
	}
}
