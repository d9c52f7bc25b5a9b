package clickhouse

import (
	"sync"

	"github.com/modelport/modelport/libs/events"
)

// recentCapacity is how many usage event IDs a Store remembers having
// stored: at 50,000 events a second, the last few seconds, which is when
// a duplicate publish or a batch stored again after an error usually
// comes; at ordinary rates, much longer. About 6 MB.
const recentCapacity = 1 << 17

// recentIDs remembers the last IDs a Store stored, oldest forgotten
// first, and the IDs inserts in progress are storing, so that two
// batches stored at once (billing's inserters) do not both insert an
// event and its duplicate. It keeps each ID as the 16 bytes of its UUID:
// hashed faster than the text, and holding no pointers for the garbage
// collector to follow. An ID that is not a lower-case UUID (billing.Check
// refuses those) is not remembered: it is always taken as fresh. It is
// safe for concurrent use.
type recentIDs struct {
	mu      sync.Mutex
	set     map[idKey]struct{}
	ring    []idKey // ring[next] is the oldest once the ring is full
	next    int
	claimed map[idKey]struct{} // being stored by an insert in progress
}

// idKey is an event ID's UUID.
type idKey [16]byte

// keyOf returns the UUID of a lower-case UUID in its text form, and
// whether id is one; each text has one key and each key one text.
func keyOf(id string) (idKey, bool) {
	var k idKey
	if len(id) != 36 || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-' {
		return k, false
	}
	j := 0
	for i := 0; i < len(id); i++ {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			continue // a dash
		}
		n, ok := hexNibble(id[i])
		if !ok {
			return k, false
		}
		k[j/2] |= n << (4 * (1 - j%2))
		j++
	}
	return k, true
}

func hexNibble(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

func newRecentIDs(n int) *recentIDs {
	return &recentIDs{set: make(map[idKey]struct{}, n), ring: make([]idKey, 0, n), claimed: map[idKey]struct{}{}}
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
		k, ok := keyOf(e.ID)
		if !ok {
			out = append(out, e)
			continue
		}
		if _, ok := r.set[k]; ok {
			continue
		}
		if _, ok := r.claimed[k]; ok {
			continue
		}
		r.claimed[k] = struct{}{}
		out = append(out, e)
	}
	return out
}

// release gives up the claims on claimed, whose insert failed.
func (r *recentIDs) release(claimed []events.RequestCompletedV1) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range claimed {
		if k, ok := keyOf(e.ID); ok {
			delete(r.claimed, k)
		}
	}
}

// stored remembers the IDs of claimed, now in ClickHouse, forgetting the
// oldest beyond its capacity, and gives up their claims.
func (r *recentIDs) stored(claimed []events.RequestCompletedV1) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range claimed {
		k, ok := keyOf(e.ID)
		if !ok {
			continue
		}
		delete(r.claimed, k)
		if _, ok := r.set[k]; ok {
			continue
		}
		r.set[k] = struct{}{}
		if len(r.ring) < cap(r.ring) {
			r.ring = append(r.ring, k)
			continue
		}
		delete(r.set, r.ring[r.next])
		r.ring[r.next] = k
		r.next = (r.next + 1) % len(r.ring)
	}
}
