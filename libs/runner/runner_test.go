package runner

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
)

// TestHealthReady: /healthz fails while a service says it is not ready,
// with the reason, and answers 200 again once it is.
func TestHealthReady(t *testing.T) {
	bus, err := natsx.Open(context.Background(), natstest.New(t).ClientURL(), "runner-test", 1, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
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
