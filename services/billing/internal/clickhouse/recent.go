package clickhouse

import (
	"sync"

	"github.com/modelport/modelport/libs/events"
)

// recentCapacity is how many usage event IDs a Store remembers having stored:
// at 50,000 events a second, the last few seconds, which is when a
// duplicate publish or a batch stored again after an error usually comes;
// at ordinary rates, much longer. About 10 MB.
const recentCapacity = 1 << 17

// recentIDs remembers the last IDs a Store stored, oldest forgotten
// first. It is safe for concurrent use.
type recentIDs struct {
	mu   sync.Mutex
	set  map[string]struct{}
	ring []string // ring[next] is the oldest once the ring is full
	next int
}

func newRecentIDs(n int) *recentIDs {
	return &recentIDs{set: make(map[string]struct{}, n), ring: make([]string, 0, n)}
}

// unseen returns, in a new slice, the events of batch whose IDs it does
// not hold, each ID once.
func (r *recentIDs) unseen(batch []events.RequestCompletedV1) []events.RequestCompletedV1 {
	out := make([]events.RequestCompletedV1, 0, len(batch))
	inBatch := make(map[string]struct{}, len(batch))
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range batch {
		if _, ok := r.set[e.ID]; ok {
			continue
		}
		if _, ok := inBatch[e.ID]; ok {
			continue
		}
		inBatch[e.ID] = struct{}{}
		out = append(out, e)
	}
	return out
}

// add remembers the IDs of stored, forgetting the oldest beyond its
// capacity.
func (r *recentIDs) add(stored []events.RequestCompletedV1) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range stored {
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
