package supervisor

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestWaitHealthy(t *testing.T) {
	tests := []struct {
		name     string
		readyAt  int64 // the poll that first answers 200; 0: never
		timeout  time.Duration
		wantErr  bool
		minPolls int64
	}{
		{name: "healthy at once", readyAt: 1, timeout: 5 * time.Second, minPolls: 1},
		{name: "healthy after a few polls", readyAt: 4, timeout: 5 * time.Second, minPolls: 4},
		{name: "never healthy", timeout: 150 * time.Millisecond, wantErr: true, minPolls: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var polls atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/health" || r.Method != http.MethodGet {
					t.Errorf("%s %s, want GET /health", r.Method, r.URL.Path)
				}
				if n := polls.Add(1); tc.readyAt == 0 || n < tc.readyAt {
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				w.WriteHeader(http.StatusOK)
			}))
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			err := waitHealthy(ctx, srv.URL+"/health", 50*time.Millisecond)
			if tc.wantErr {
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("err = %v, want the context's deadline", err)
				}
				if !strings.Contains(err.Error(), srv.URL) || !strings.Contains(err.Error(), "503") {
					t.Errorf("error %q does not name the URL and the last answer", err)
				}
			} else if err != nil {
				t.Fatalf("waitHealthy: %v", err)
			}
			if got := polls.Load(); got < tc.minPolls {
				t.Errorf("polled %d times, want at least %d", got, tc.minPolls)
			}
			if !tc.wantErr {
				if got, want := polls.Load(), tc.readyAt; got != want {
					t.Errorf("polled %d times, want %d: no poll after healthy", got, want)
				}
			}
		})
	}
	t.Run("unreachable", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if err := waitHealthy(ctx, srv.URL, time.Second); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want the context's deadline", err)
		}
	})
}
