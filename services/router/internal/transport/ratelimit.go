package transport

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
	"golang.org/x/time/rate"
)

// KeyLimiter allows each API key a number of requests per minute, in a
// token bucket that holds a minute's worth, so short bursts pass and a
// steady excess gets 429 with Retry-After. It is safe for concurrent use.
type KeyLimiter struct {
	perMinute int
	mu        sync.Mutex
	buckets   map[string]*rate.Limiter
}

// NewKeyLimiter returns a limiter; perMinute <= 0 allows everything.
func NewKeyLimiter(perMinute int) *KeyLimiter {
	return &KeyLimiter{perMinute: perMinute, buckets: map[string]*rate.Limiter{}}
}

// Limit wraps an authenticated handler.
func (l *KeyLimiter) Limit(next http.Handler) http.Handler {
	if l.perMinute <= 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k, _ := auth.FromContext(r.Context())
		if wait := l.reserve(k.ID); wait > 0 {
			httpx.WriteError(w, &errs.Error{Kind: errs.RateLimited, RetryAfter: wait,
				Msg: fmt.Sprintf("rate limit of %d requests per minute reached for this API key; retry in %s", l.perMinute, wait.Round(time.Millisecond))})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// reserve takes a token for key and returns 0, or how long until one is
// free (taking none).
func (l *KeyLimiter) reserve(key string) time.Duration {
	l.mu.Lock()
	b, ok := l.buckets[key]
	if !ok {
		b = rate.NewLimiter(rate.Limit(float64(l.perMinute)/60), l.perMinute)
		l.buckets[key] = b
	}
	l.mu.Unlock()
	res := b.Reserve()
	if wait := res.Delay(); wait > 0 {
		res.Cancel()
		return wait
	}
	return 0
}
