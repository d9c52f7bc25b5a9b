package transport

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/services/router/internal/ratelimit"
)

// fakeClock is a clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// checkRateLimited fails unless rec is OpenAI's 429 for a spent budget of
// the given type ("requests" or "tokens"), with both retry headers.
func checkRateLimited(t *testing.T, rec *httptest.ResponseRecorder, typ, retryAfter, retryAfterMs string) {
	t.Helper()
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429; body %s", rec.Code, rec.Body)
	}
	var body httpx.ErrorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %s: %v", rec.Body, err)
	}
	if body.Error.Type != typ || body.Error.Code == nil || *body.Error.Code != "rate_limit_exceeded" || body.Error.Param != nil || body.Error.Message == "" {
		t.Errorf("error %+v, want type %q, code rate_limit_exceeded, param null and a message", body.Error, typ)
	}
	if got := rec.Header().Get("Retry-After"); got != retryAfter {
		t.Errorf("Retry-After = %q, want %q", got, retryAfter)
	}
	if got := rec.Header().Get("Retry-After-Ms"); got != retryAfterMs {
		t.Errorf("Retry-After-Ms = %q, want %q", got, retryAfterMs)
	}
}

func TestKeyLimiter(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	send := func(h http.Handler, key string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "/v1/models", nil)
		r = r.WithContext(auth.NewContext(r.Context(), auth.Key{ID: key}))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		return rec
	}

	t.Run("a minute's burst passes, then 429 with Retry-After", func(t *testing.T) {
		c := newFakeClock()
		h := limitKeys(ratelimit.New(ratelimit.Config{KeyRequests: 3}, c.Now), quiet)(ok)
		for i := range 3 {
			if got := send(h, "k1").Code; got != http.StatusNoContent {
				t.Fatalf("request %d: status %d, want 204", i, got)
			}
		}
		checkRateLimited(t, send(h, "k1"), "requests", "20", "20000")
		c.advance(19500 * time.Millisecond)
		checkRateLimited(t, send(h, "k1"), "requests", "1", "500")
		c.advance(500 * time.Millisecond)
		if got := send(h, "k1").Code; got != http.StatusNoContent {
			t.Errorf("after the wait: status %d, want 204", got)
		}
	})
	t.Run("keys have their own buckets", func(t *testing.T) {
		h := limitKeys(ratelimit.New(ratelimit.Config{KeyRequests: 1}, newFakeClock().Now), quiet)(ok)
		if got := send(h, "a").Code; got != http.StatusNoContent {
			t.Fatalf("a: %d", got)
		}
		if got := send(h, "b").Code; got != http.StatusNoContent {
			t.Errorf("b after a: status %d, want 204", got)
		}
		if got := send(h, "a").Code; got != http.StatusTooManyRequests {
			t.Errorf("a again: status %d, want 429", got)
		}
	})
	t.Run("zero means no limit", func(t *testing.T) {
		for _, l := range []*ratelimit.Limiter{nil, ratelimit.New(ratelimit.Config{KeyTokens: 5}, nil)} {
			h := limitKeys(l, quiet)(ok)
			for i := range 100 {
				if got := send(h, "k").Code; got != http.StatusNoContent {
					t.Fatalf("request %d: status %d", i, got)
				}
			}
		}
	})
}
