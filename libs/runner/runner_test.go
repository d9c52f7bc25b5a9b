package runner

import (
	"errors"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/modelport/modelport/libs/natstest"
)

// TestHealthReady: /healthz fails while a service says it is not ready,
// with the reason, and answers 200 again once it is.
func TestHealthReady(t *testing.T) {
	bus := natstest.New(t).Bus(t, natstest.Admin)
	var down atomic.Bool
	h := WithHealth(nil, bus, "", nil, func() error {
		if down.Load() {
			return errors.New("the routing table's watch is down")
		}
		return nil
	})
	check := func(want int, body string) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		if rec.Code != want || !strings.Contains(rec.Body.String(), body) {
			t.Errorf("/healthz: %d %q, want %d with %q", rec.Code, rec.Body, want, body)
		}
	}
	check(200, "ok")
	down.Store(true)
	check(503, "watch is down")
	down.Store(false)
	check(200, "ok")
}
