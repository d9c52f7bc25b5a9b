package httpx_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
)

// errorBody decodes an error answer keeping null apart from "".
type errorBody struct {
	Error struct {
		Message *string `json:"message"`
		Type    *string `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func decodeError(t *testing.T, rec *httptest.ResponseRecorder) errorBody {
	t.Helper()
	if got, want := rec.Header().Get("Content-Type"), "application/json"; got != want {
		t.Errorf("Content-Type = %q, want %q", got, want)
	}
	// Every key is present, null or not, as in OpenAI's answers.
	var raw struct {
		Error map[string]json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
		t.Fatalf("decode %s: %v", rec.Body, err)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := raw.Error[k]; !ok {
			t.Errorf("error.%s missing from %s", k, rec.Body)
		}
	}
	var b errorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil {
		t.Fatal(err)
	}
	return b
}

func str(p *string) string {
	if p == nil {
		return "<null>"
	}
	return *p
}

func TestWriteErrorRetryAfter(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"rounded up to whole seconds", &errs.Error{Kind: errs.RateLimited, Msg: "slow down", RetryAfter: 1500 * time.Millisecond}, "2"},
		{"absent when unset", errs.E(errs.RateLimited, "slow down"), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			httpx.WriteError(rec, tc.err)
			if got := rec.Header().Get("Retry-After"); got != tc.want {
				t.Errorf("Retry-After = %q, want %q", got, tc.want)
			}
			if rec.Code != http.StatusTooManyRequests {
				t.Errorf("status = %d, want 429", rec.Code)
			}
		})
	}
}

func TestWriteError(t *testing.T) {
	const null = "<null>"
	tests := []struct {
		name        string
		err         error
		wantStatus  int
		wantType    string
		wantMessage string
		wantParam   string
		wantCode    string
	}{
		{
			name: "invalid with param", err: errs.InvalidParam("name", "name must be lowercase"),
			wantStatus: 400, wantType: "invalid_request_error", wantMessage: "name must be lowercase", wantParam: "name", wantCode: "invalid",
		},
		{
			name: "invalid without param", err: errs.E(errs.Invalid, "bad request"),
			wantStatus: 400, wantType: "invalid_request_error", wantMessage: "bad request", wantParam: null, wantCode: "invalid",
		},
		{
			name: "unauthorized", err: errs.E(errs.Unauthorized, "invalid API key"),
			wantStatus: 401, wantType: "authentication_error", wantMessage: "invalid API key", wantParam: null, wantCode: "unauthorized",
		},
		{
			name: "forbidden", err: errs.E(errs.Forbidden, "only admins"),
			wantStatus: 403, wantType: "permission_error", wantMessage: "only admins", wantParam: null, wantCode: "forbidden",
		},
		{
			name: "too large", err: errs.E(errs.TooLarge, "body over 1 MiB"),
			wantStatus: 413, wantType: "invalid_request_error", wantMessage: "body over 1 MiB", wantParam: null, wantCode: "too_large",
		},
		{
			name: "engine failed", err: errs.E(errs.Upstream, "engine failed"),
			wantStatus: 502, wantType: "server_error", wantMessage: "engine failed", wantParam: null, wantCode: "upstream_error",
		},
		{
			name: "engine timed out", err: errs.E(errs.Timeout, "engine timed out"),
			wantStatus: 504, wantType: "server_error", wantMessage: "engine timed out", wantParam: null, wantCode: "timeout",
		},
		{
			name: "not found", err: errs.E(errs.NotFound, "service s1 not found"),
			wantStatus: 404, wantType: "not_found_error", wantMessage: "service s1 not found", wantParam: null, wantCode: "not_found",
		},
		{
			name: "conflict", err: &errs.Error{Kind: errs.Conflict, Param: "name", Msg: "a service named chat already exists"},
			wantStatus: 409, wantType: "conflict_error", wantMessage: "a service named chat already exists", wantParam: "name", wantCode: "conflict",
		},
		{
			name: "rate limited", err: errs.E(errs.RateLimited, "slow down"),
			wantStatus: 429, wantType: "rate_limit_error", wantMessage: "slow down", wantParam: null, wantCode: "rate_limited",
		},
		{
			name: "unavailable hides its cause", err: errs.Wrap(errs.Unavailable, errors.New("dial tcp 10.0.0.7:4222: refused"), "no instance ready"),
			wantStatus: 503, wantType: "service_unavailable_error", wantMessage: "no instance ready", wantParam: null, wantCode: "unavailable",
		},
		{
			name: "wrapped kind keeps its mapping", err: fmt.Errorf("get service: %w", errs.E(errs.NotFound, "service s1 not found")),
			wantStatus: 404, wantType: "not_found_error", wantMessage: "service s1 not found", wantParam: null, wantCode: "not_found",
		},
		{
			name: "plain error is internal", err: errors.New("clickhouse password rejected for user billing"),
			wantStatus: 500, wantType: "server_error", wantMessage: "internal error", wantParam: null, wantCode: null,
		},
		{
			name: "explicit internal hides its message", err: errs.E(errs.Internal, "nil map in gateway.go:42"),
			wantStatus: 500, wantType: "server_error", wantMessage: "internal error", wantParam: null, wantCode: null,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			httpx.WriteError(rec, tc.err)
			if got, want := rec.Code, tc.wantStatus; got != want {
				t.Errorf("status = %d, want %d", got, want)
			}
			if got, want := httpx.Status(tc.err), tc.wantStatus; got != want {
				t.Errorf("Status = %d, want %d", got, want)
			}
			b := decodeError(t, rec)
			if got, want := str(b.Error.Message), tc.wantMessage; got != want {
				t.Errorf("message = %q, want %q", got, want)
			}
			if got, want := str(b.Error.Type), tc.wantType; got != want {
				t.Errorf("type = %q, want %q", got, want)
			}
			if got, want := str(b.Error.Param), tc.wantParam; got != want {
				t.Errorf("param = %q, want %q", got, want)
			}
			if got, want := str(b.Error.Code), tc.wantCode; got != want {
				t.Errorf("code = %q, want %q", got, want)
			}
			if tc.wantStatus >= 500 && strings.Contains(rec.Body.String(), "10.0.0.7") {
				t.Errorf("body leaks the cause: %s", rec.Body)
			}
		})
	}
}

func TestInternalDoesNotLeak(t *testing.T) {
	secret := "password=hunter2"
	for _, err := range []error{
		errors.New(secret),
		fmt.Errorf("query: %w", errors.New(secret)),
		errs.E(errs.Internal, "%s", secret),
		errs.Wrap(errs.Internal, errors.New(secret), "%s", secret),
	} {
		rec := httptest.NewRecorder()
		httpx.WriteError(rec, err)
		if strings.Contains(rec.Body.String(), "hunter2") {
			t.Errorf("WriteError(%v) leaks it: %s", err, rec.Body)
		}
	}
}

// fakeVerifier knows one secret.
type fakeVerifier struct {
	secret string
	key    auth.Key
	err    error // returned for every other secret; Unauthorized when nil
	got    []string
}

func (f *fakeVerifier) Verify(_ context.Context, secret string) (auth.Key, error) {
	f.got = append(f.got, secret)
	if secret == f.secret {
		return f.key, nil
	}
	if f.err != nil {
		return auth.Key{}, f.err
	}
	return auth.Key{}, errs.E(errs.Unauthorized, "invalid API key")
}

func TestAuthenticate(t *testing.T) {
	const secret = "mp-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	key := auth.Key{ID: "k1", OwnerID: "8105f7322477"}
	tests := []struct {
		name       string
		header     string // "" means no Authorization header
		verifyErr  error
		wantStatus int
		wantType   string
		wantAsked  string // the secret the verifier must see; "" means not asked
	}{
		{name: "good key", header: "Bearer " + secret, wantStatus: 200, wantAsked: secret},
		{name: "surrounding spaces trimmed", header: "Bearer  " + secret + " ", wantStatus: 200, wantAsked: secret},
		{name: "missing header", wantStatus: 401, wantType: "authentication_error"},
		{name: "empty bearer", header: "Bearer ", wantStatus: 401, wantType: "authentication_error"},
		{name: "basic scheme", header: "Basic dXNlcjpwYXNz", wantStatus: 401, wantType: "authentication_error"},
		{name: "bare secret", header: secret, wantStatus: 401, wantType: "authentication_error"},
		{name: "wrong key", header: "Bearer mp-wrong", wantStatus: 401, wantType: "authentication_error", wantAsked: "mp-wrong"},
		{
			name: "verifier unavailable", header: "Bearer mp-other", verifyErr: errs.E(errs.Unavailable, "key store unreachable"),
			wantStatus: 503, wantType: "service_unavailable_error", wantAsked: "mp-other",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := &fakeVerifier{secret: secret, key: key, err: tc.verifyErr}
			var seen *auth.Key
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				k, ok := auth.FromContext(r.Context())
				if ok {
					seen = &k
				}
				w.WriteHeader(http.StatusOK)
			})
			req := httptest.NewRequest(http.MethodGet, "/v1/models", nil)
			if tc.header != "" {
				req.Header.Set("Authorization", tc.header)
			}
			rec := httptest.NewRecorder()
			httpx.Authenticate(v)(next).ServeHTTP(rec, req)

			if got, want := rec.Code, tc.wantStatus; got != want {
				t.Fatalf("status = %d, want %d: %s", got, want, rec.Body)
			}
			asked := ""
			if len(v.got) > 0 {
				asked = v.got[0]
			}
			if asked != tc.wantAsked || len(v.got) > 1 {
				t.Errorf("verifier asked %q, want %q", v.got, tc.wantAsked)
			}
			if tc.wantStatus == http.StatusOK {
				if seen == nil || !reflect.DeepEqual(*seen, key) {
					t.Errorf("handler saw key %v, want %+v", seen, key)
				}
				return
			}
			if seen != nil {
				t.Error("the handler ran for a rejected request")
			}
			b := decodeError(t, rec)
			if got, want := str(b.Error.Type), tc.wantType; got != want {
				t.Errorf("type = %q, want %q", got, want)
			}
			if str(b.Error.Message) == "" {
				t.Error("empty message")
			}
		})
	}
}

func TestRequestID(t *testing.T) {
	generated := regexp.MustCompile(`^[0-9a-f]{32}$`)
	tests := []struct {
		name     string
		incoming string
		keep     bool
	}{
		{name: "sane id kept", incoming: "req-01HZX3-abc_DEF.42", keep: true},
		{name: "128 characters kept", incoming: strings.Repeat("a", 128), keep: true},
		{name: "printable punctuation kept", incoming: "a!~{}", keep: true},
		{name: "none", incoming: ""},
		{name: "129 characters replaced", incoming: strings.Repeat("a", 129)},
		{name: "space replaced", incoming: "req 1"},
		{name: "control character replaced", incoming: "req\x01"},
		{name: "tab replaced", incoming: "req\t1"},
		{name: "non-ASCII replaced", incoming: "réq-1"},
		{name: "DEL replaced", incoming: "req\x7f"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var inCtx string
			h := httpx.Edge(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				inCtx = httpx.RequestIDFromContext(r.Context())
			}), "test", quietLog)
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			if tc.incoming != "" {
				req.Header["X-Request-Id"] = []string{tc.incoming}
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)

			echoed := rec.Header().Get("X-Request-Id")
			if echoed != inCtx {
				t.Errorf("response id %q, context id %q: want the same", echoed, inCtx)
			}
			if tc.keep {
				if echoed != tc.incoming {
					t.Errorf("id = %q, want the incoming %q", echoed, tc.incoming)
				}
				return
			}
			if !generated.MatchString(echoed) {
				t.Errorf("id = %q, want a fresh 32-hex id", echoed)
			}
		})
	}
	t.Run("fresh ids differ", func(t *testing.T) {
		ids := map[string]bool{}
		h := httpx.Edge(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), "test", quietLog)
		for range 100 {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
			ids[rec.Header().Get("X-Request-Id")] = true
		}
		if len(ids) != 100 {
			t.Errorf("100 requests got %d distinct ids", len(ids))
		}
	})
	if got := httpx.RequestIDFromContext(context.Background()); got != "" {
		t.Errorf("RequestIDFromContext of an empty context = %q", got)
	}
}

func TestDecodeJSON(t *testing.T) {
	type options struct {
		Size int `json:"size"`
	}
	type request struct {
		Name      string  `json:"name"`
		Instances int     `json:"instances"`
		Options   options `json:"options"`
	}
	tests := []struct {
		name      string
		body      string
		limit     int64
		want      request
		wantErr   bool
		wantParam string
		wantInMsg string
		wantKind  errs.Kind // Invalid unless set
	}{
		{name: "valid", body: `{"name":"chat","instances":2}`, limit: 1 << 10, want: request{Name: "chat", Instances: 2}},
		{
			name: "unknown field", body: `{"name":"chat","extra":true}`, limit: 1 << 10,
			wantErr: true, wantParam: "extra", wantInMsg: `unknown field "extra"; the fields are name, instances, options`,
		},
		{
			name: "unknown nested field, near a known one", body: `{"options":{"sise":2}}`, limit: 1 << 10,
			wantErr: true, wantParam: "options.sise", wantInMsg: `did you mean "options.size"?`,
		},
		{
			name: "too large", body: `{"name":"` + strings.Repeat("x", 2000) + `"}`, limit: 1 << 10,
			wantErr: true, wantInMsg: "1024", wantKind: errs.TooLarge,
		},
		{
			name: "wrong type", body: `{"name":"chat","instances":"two"}`, limit: 1 << 10,
			wantErr: true, wantParam: "instances", wantInMsg: "instances",
		},
		{
			name: "wrong type, string field", body: `{"name":42}`, limit: 1 << 10,
			wantErr: true, wantParam: "name", wantInMsg: "name",
		},
		{
			name: "wrong type, nested field", body: `{"options":{"size":"big"}}`, limit: 1 << 10,
			wantErr: true, wantParam: "options.size", wantInMsg: "options.size",
		},
		{name: "empty body", body: ``, limit: 1 << 10, wantErr: true, wantInMsg: "empty"},
		{name: "malformed", body: `{"name":`, limit: 1 << 10, wantErr: true},
		{name: "not an object", body: `[1,2]`, limit: 1 << 10, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tc.body))
			var got request
			err := httpx.DecodeJSON(req, &got, tc.limit)
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("DecodeJSON: %v", err)
				}
				if got != tc.want {
					t.Errorf("decoded %+v, want %+v", got, tc.want)
				}
				return
			}
			want := errs.Invalid
			if tc.wantKind != 0 {
				want = tc.wantKind
			}
			if got := errs.KindOf(err); got != want {
				t.Fatalf("kind = %v, want %v (err %v)", got, want, err)
			}
			e, _ := errs.As(err)
			if got, want := e.Param, tc.wantParam; got != want {
				t.Errorf("param = %q, want %q (err %v)", got, want, err)
			}
			if !strings.Contains(e.Msg, tc.wantInMsg) {
				t.Errorf("message %q does not mention %q", e.Msg, tc.wantInMsg)
			}
		})
	}
}

// A body of the wrong JSON type at the top level has no field to name;
// the message must still say what is wrong rather than start with a blank
// field name.
func TestDecodeJSONTopLevelWrongType(t *testing.T) {
	for _, body := range []string{`[1,2]`, `"chat"`, `42`} {
		t.Run(body, func(t *testing.T) {
			var v struct {
				Name string `json:"name"`
			}
			err := httpx.DecodeJSON(httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body)), &v, 1<<10)
			if got, want := errs.KindOf(err), errs.Invalid; got != want {
				t.Fatalf("kind = %v, want %v (err %v)", got, want, err)
			}
			e, _ := errs.As(err)
			if e.Param != "" {
				t.Errorf("param = %q, want none", e.Param)
			}
			if strings.HasPrefix(e.Msg, " ") || strings.HasPrefix(e.Msg, "must") {
				t.Errorf("message %q starts with an empty field name", e.Msg)
			}
		})
	}
}

func TestDecodeJSONThroughWriteError(t *testing.T) {
	// What a client sees for a wrong type: a 400 naming the parameter.
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{"instances":"two"}`))
	var v struct {
		Instances int `json:"instances"`
	}
	rec := httptest.NewRecorder()
	httpx.WriteError(rec, httpx.DecodeJSON(req, &v, 1<<10))
	if got, want := rec.Code, http.StatusBadRequest; got != want {
		t.Errorf("status = %d, want %d", got, want)
	}
	if got, want := str(decodeError(t, rec).Error.Param), "instances"; got != want {
		t.Errorf("param = %q, want %q", got, want)
	}
}

func TestEdgeRecovers(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	h := httpx.Edge(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("boom")
	}), "test", log)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/v1/models", nil))

	if got, want := rec.Code, http.StatusInternalServerError; got != want {
		t.Errorf("status = %d, want %d", got, want)
	}
	if got, want := str(decodeError(t, rec).Error.Type), "server_error"; got != want {
		t.Errorf("type = %q, want %q", got, want)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if got, want := len(lines), 2; got != want {
		t.Fatalf("logged %d lines, want %d (panic, request): %s", got, want, logs.String())
	}
	var line struct {
		Msg       string `json:"msg"`
		Status    int    `json:"status"`
		Path      string `json:"path"`
		RequestID string `json:"request_id"`
	}
	if err := json.Unmarshal([]byte(lines[1]), &line); err != nil {
		t.Fatal(err)
	}
	if line.Status != 500 || line.Path != "/v1/models" || line.RequestID != rec.Header().Get("X-Request-Id") || line.RequestID == "" {
		t.Errorf("request line = %+v, want status 500, path and request id %q", line, rec.Header().Get("X-Request-Id"))
	}
}

func TestEdgeLogsStatus(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    int
	}{
		{name: "explicit", handler: func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) }, want: http.StatusTeapot},
		{name: "implicit", handler: func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }, want: http.StatusOK},
		{name: "error", handler: func(w http.ResponseWriter, _ *http.Request) { httpx.WriteError(w, errs.E(errs.NotFound, "x")) }, want: http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			h := httpx.Edge(tc.handler, "test", slog.New(slog.NewJSONHandler(&logs, nil)))
			h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
			var line struct {
				Status int `json:"status"`
			}
			if err := json.Unmarshal(logs.Bytes(), &line); err != nil {
				t.Fatalf("decode %s: %v", logs.String(), err)
			}
			if got := line.Status; got != tc.want {
				t.Errorf("logged status %d, want %d", got, tc.want)
			}
		})
	}
}

func TestChainOrder(t *testing.T) {
	var order []string
	mw := func(name string) func(http.Handler) http.Handler {
		return func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				order = append(order, name)
				next.ServeHTTP(w, r)
			})
		}
	}
	h := httpx.Chain(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { order = append(order, "handler") }),
		mw("outer"), mw("middle"), mw("inner"))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	if got, want := strings.Join(order, ","), "outer,middle,inner,handler"; got != want {
		t.Errorf("order = %s, want %s", got, want)
	}
}
