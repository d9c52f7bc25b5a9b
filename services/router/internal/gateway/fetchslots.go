package gateway

import (
	"context"
	"sync"
)

// fetchSlots bounds the image fetches in flight: total across all
// requests, and perOwner for the requests of one owner, so an owner whose
// image URLs are slow can hold a share of the slots but never all of
// them. It is safe for concurrent use.
type fetchSlots struct {
	total, perOwner int

	mu      sync.Mutex
	used    int
	owners  map[string]int
	changed chan struct{} // closed and replaced when a slot is freed
}

func newFetchSlots(total, perOwner int) *fetchSlots {
	return &fetchSlots{total: total, perOwner: max(1, min(perOwner, total)), owners: map[string]int{}, changed: make(chan struct{})}
}

// acquire takes a slot for owner, waiting until one is free for it or
// ctx ends (then it returns ctx's error). The caller calls release once.
func (s *fetchSlots) acquire(ctx context.Context, owner string) (release func(), err error) {
	for {
		s.mu.Lock()
		if s.used < s.total && s.owners[owner] < s.perOwner {
			s.used++
			s.owners[owner]++
			s.mu.Unlock()
			var once sync.Once
			return func() { once.Do(func() { s.release(owner) }) }, nil
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (s *fetchSlots) release(owner string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.used--
	if s.owners[owner]--; s.owners[owner] <= 0 {
		delete(s.owners, owner)
	}
	close(s.changed)
	s.changed = make(chan struct{})
}
