// Package httpx holds what every Modelport HTTP edge shares: OpenAI-style
// error bodies mapped from errs kinds, JSON helpers, bearer
// authentication, and Edge: each request's span, ID, server metric,
// access log and recovery from panics.
package httpx

import (
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
)

// ErrorBody is the OpenAI error object.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody. Param and Code are null when unset.
type ErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// statusOf maps each kind to its HTTP status and OpenAI error type, once.
var statusOf = map[errs.Kind]struct {
	status int
	typ    string
}{
	errs.Invalid:      {http.StatusBadRequest, "invalid_request_error"},
	errs.Unauthorized: {http.StatusUnauthorized, "authentication_error"},
	errs.Forbidden:    {http.StatusForbidden, "permission_error"},
	errs.NotFound:     {http.StatusNotFound, "not_found_error"},
	errs.Conflict:     {http.StatusConflict, "conflict_error"},
	errs.RateLimited:  {http.StatusTooManyRequests, "rate_limit_error"},
	errs.Unavailable:  {http.StatusServiceUnavailable, "service_unavailable_error"},
	errs.TooLarge:     {http.StatusRequestEntityTooLarge, "invalid_request_error"},
	errs.Upstream:     {http.StatusBadGateway, "server_error"},
	errs.Timeout:      {http.StatusGatewayTimeout, "server_error"},
	errs.Internal:     {http.StatusInternalServerError, "server_error"},
}

// Status returns the HTTP status for err's kind.
func Status(err error) int { return statusOf[errs.KindOf(err)].status }

// WriteError writes err as an OpenAI error object. Internal errors show
// only a generic message; Fail also logs them.
func WriteError(w http.ResponseWriter, err error) {
	kind := errs.KindOf(err)
	m := statusOf[kind]
	d := ErrorDetail{Message: "internal error", Type: m.typ}
	if e, ok := errs.As(err); ok {
		if kind != errs.Internal {
			d.Message = e.Msg
		}
		if e.Param != "" {
			d.Param = &e.Param
		}
		if e.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(e.RetryAfter.Seconds()))))
		}
	}
	if kind != errs.Internal {
		code := kind.String()
		d.Code = &code
	}
	WriteJSON(w, m.status, ErrorBody{Error: d})
}

// Fail writes err for the request and logs it when it is internal: the
// edge is the one place an error is logged, and the caller sees only its
// kind.
func Fail(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	if errs.KindOf(err) == errs.Internal {
		log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	WriteError(w, err)
}

// WriteJSON writes v with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Verifier checks a bearer secret; *auth.Keyring implements it.
type Verifier interface {
	Verify(ctx context.Context, secret string) (auth.Key, error)
}

// Authenticate requires "Authorization: Bearer <key>" and puts the key in
// the request context.
func Authenticate(v Verifier) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			scheme, secret, _ := strings.Cut(r.Header.Get("Authorization"), " ")
			if !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(secret) == "" {
				WriteError(w, errs.E(errs.Unauthorized, "missing API key: send the header Authorization: Bearer <API key>"))
				return
			}
			k, err := v.Verify(r.Context(), strings.TrimSpace(secret))
			if err != nil {
				WriteError(w, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(auth.NewContext(r.Context(), k)))
		})
	}
}

// Chain applies middleware so that the first one listed is the outermost.
func Chain(h http.Handler, mw ...func(http.Handler) http.Handler) http.Handler {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	return h
}
