package simulator

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
)

// gate admits at most limit requests at once and lets up to queue more
// wait for a slot. A limit of 0 admits everything.
type gate struct {
	slots chan struct{} // nil when unlimited
	queue int

	mu      sync.Mutex
	waiting int
}

func newGate(limit, queue int) *gate {
	g := &gate{queue: max(queue, 0)}
	if limit > 0 {
		g.slots = make(chan struct{}, limit)
	}
	return g
}

// enter takes a slot, waiting in the queue when there is room there. It
// reports admitted when it took one, which the caller gives back with
// leave, and full when it was turned away for want of room in the queue;
// neither when ctx ended in the queue.
func (g *gate) enter(ctx context.Context) (admitted bool, full bool) {
	if g.slots == nil {
		return true, false
	}
	select {
	case g.slots <- struct{}{}:
		return true, false
	default:
	}
	g.mu.Lock()
	if g.waiting >= g.queue {
		g.mu.Unlock()
		return false, true
	}
	g.waiting++
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.waiting--
		g.mu.Unlock()
	}()
	select {
	case g.slots <- struct{}{}:
		return true, false
	case <-ctx.Done():
		return false, false
	}
}

func (g *gate) leave() {
	if g.slots != nil {
		<-g.slots
	}
}

// load is how many requests hold a slot and how many wait for one.
func (g *gate) load() (running, queued int) {
	if g.slots == nil {
		return 0, 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.slots), g.waiting
}

// Load reports how many chat and image requests are being answered and
// how many wait for a slot; with MaxConcurrent 0 nothing is counted and it
// reports 0, 0.
func (s *Server) Load() (running, queued int) { return s.gate.load() }

// faults draws which requests fail, from a seeded source so a test gets
// the same failures every run.
type faults struct {
	rate float64
	mu   sync.Mutex
	rng  *rand.Rand
}

func newFaults(rate float64, seed uint64) *faults {
	return &faults{rate: rate, rng: rand.New(rand.NewPCG(seed, 0xfa11))}
}

// fail reports whether the next request fails. It draws nothing when the
// rate is 0, and always fails at 1.
func (f *faults) fail() bool {
	if f.rate <= 0 {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rng.Float64() < f.rate
}

// shaped runs next for chat and image requests under the failure rate and
// the concurrency limit: a drawn failure is a 500 at once; past the limit
// and a full queue, a 429 with Retry-After: 1. The slot is held until next
// returns, to the end of a stream.
func (s *Server) shaped(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.faults.fail() {
			writeErrorType(w, http.StatusInternalServerError, "simulated engine failure", "server_error", "")
			return
		}
		// Read the body before waiting for a slot: only then does the
		// server notice a queued client that goes away.
		body, err := readBody(w, r)
		if err != nil {
			fail(w, err)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		admitted, full := s.gate.enter(r.Context())
		if full {
			running, queued := s.gate.load()
			w.Header().Set("Retry-After", "1")
			writeErrorType(w, http.StatusTooManyRequests,
				fmt.Sprintf("the simulated engine is at capacity: %d requests running and %d queued", running, queued),
				"rate_limit_error", "")
			return
		}
		if !admitted { // the client went away while queued
			return
		}
		defer s.gate.leave()
		next.ServeHTTP(w, r)
	})
}

// loaded answers 503 until the simulated start is over.
func (s *Server) loaded(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.Ready() {
			writeErrorType(w, http.StatusServiceUnavailable, "the simulated engine is still loading the model", "server_error", "")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// cut closes the connection under w as a crashed engine would: what was
// flushed stays sent, and nothing else is; a response begun ends without
// its last chunk.
func cut(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2, or a recorder in a test: abort the response instead.
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}
