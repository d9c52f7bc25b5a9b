package transport

import (
	"errors"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/services/router/internal/ratelimit"
)

// limitKeys is the middleware that takes one request from the caller's
// per-key budget, after authentication, before the body is read. A nil
// limiter, or one without a per-key request limit, passes everything.
func limitKeys(l *ratelimit.Limiter, log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if l == nil || l.Config().KeyRequests <= 0 {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			k, _ := auth.FromContext(r.Context())
			if err := l.Request(k.ID); err != nil {
				writeError(w, r, log, err)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// rateLimitCode is OpenAI's error code for a spent rate limit.
const rateLimitCode = "rate_limit_exceeded"

// writeError writes err as an OpenAI error. A rate limit is written as
// OpenAI writes it (type "requests" or "tokens", code
// "rate_limit_exceeded") with Retry-After in seconds and retry-after-ms,
// which the official clients wait for before retrying; everything else as
// httpx maps it.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	e, ok := errs.As(err)
	if !ok || e.Kind != errs.RateLimited {
		httpx.Fail(w, r, log, err)
		return
	}
	typ := "requests"
	if errors.Is(err, ratelimit.ErrTokens) {
		typ = "tokens"
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(e.RetryAfter.Seconds()))))
		w.Header().Set("Retry-After-Ms", strconv.FormatInt(int64(math.Ceil(float64(e.RetryAfter)/float64(time.Millisecond))), 10))
	}
	code := rateLimitCode
	httpx.WriteJSON(w, http.StatusTooManyRequests, httpx.ErrorBody{Error: httpx.ErrorDetail{Message: e.Msg, Type: typ, Code: &code}})
}
