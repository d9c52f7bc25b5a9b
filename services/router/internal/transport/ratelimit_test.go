package transport

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/modelport/modelport/libs/auth"
)

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
		h := NewKeyLimiter(3).Limit(ok)
		for i := range 3 {
			if got := send(h, "k1").Code; got != http.StatusNoContent {
				t.Fatalf("request %d: status %d, want 204", i, got)
			}
		}
		rec := send(h, "k1")
		if rec.Code != http.StatusTooManyRequests {
			t.Fatalf("4th request: status %d, want 429", rec.Code)
		}
		secs, err := strconv.Atoi(rec.Header().Get("Retry-After"))
		if err != nil || secs < 1 || secs > 20 {
			t.Errorf("Retry-After = %q, want 1..20 seconds (one token per 20s)", rec.Header().Get("Retry-After"))
		}
	})
	t.Run("keys have their own buckets", func(t *testing.T) {
		h := NewKeyLimiter(1).Limit(ok)
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
		h := NewKeyLimiter(0).Limit(ok)
		for i := range 100 {
			if got := send(h, "k").Code; got != http.StatusNoContent {
				t.Fatalf("request %d: status %d", i, got)
			}
		}
	})
}
