package gateway

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelport/modelport/libs/errs"
)

// Budget bounds the bytes the router holds for requests at once, across
// all of them: request bodies and the images fetched for them, from the
// moment they are read until the request to the engine has been written
// (or the request ends without one). A request that would go over it is
// refused with errs.Unavailable and a Retry-After, before anything reaches
// an engine, rather than growing the router's memory without bound. It is
// safe for concurrent use; a nil Budget bounds nothing.
type Budget struct {
	max  int64
	used atomic.Int64
}

// NewBudget returns a budget of max bytes.
func NewBudget(max int64) *Budget { return &Budget{max: max} }

// Max returns the budget's size; 0 for a nil Budget.
func (b *Budget) Max() int64 {
	if b == nil {
		return 0
	}
	return b.max
}

// Used returns the bytes held now.
func (b *Budget) Used() int64 {
	if b == nil {
		return 0
	}
	return b.used.Load()
}

// Hold returns an empty hold on b, for one request.
func (b *Budget) Hold() *Hold { return &Hold{b: b} }

// errBusy is the refusal when the budget is spent.
func errBusy() error {
	return &errs.Error{Kind: errs.Unavailable, RetryAfter: time.Second,
		Msg: "the router is holding as many request bytes as it may (large bodies or images); retry shortly"}
}

// Hold is the bytes one request holds of a Budget. Grow and Shrink are
// for the request's own goroutine; Release may be called from any, and
// more than once. Methods on a nil Hold do nothing.
type Hold struct {
	b    *Budget
	mu   sync.Mutex
	n    int64
	done bool
}

// Grow takes n more bytes, or returns errs.Unavailable, taking none, when
// the budget has no room for them.
func (h *Hold) Grow(n int64) error {
	if h == nil || h.b == nil || n <= 0 {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done {
		return nil
	}
	for {
		used := h.b.used.Load()
		if used+n > h.b.max {
			return errBusy()
		}
		if h.b.used.CompareAndSwap(used, used+n) {
			h.n += n
			return nil
		}
	}
}

// Shrink gives back n bytes the request no longer holds.
func (h *Hold) Shrink(n int64) {
	if h == nil || h.b == nil || n <= 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	n = min(n, h.n)
	h.n -= n
	h.b.used.Add(-n)
}

// Release gives back everything; the hold takes nothing more.
func (h *Hold) Release() {
	if h == nil || h.b == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.b.used.Add(-h.n)
	h.n, h.done = 0, true
}

// Bytes returns what the hold has.
func (h *Hold) Bytes() int64 {
	if h == nil {
		return 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}
