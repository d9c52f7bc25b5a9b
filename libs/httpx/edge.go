package httpx

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/errs"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

const instrumentation = "github.com/modelport/modelport/libs/httpx"

// Edge wraps h in what every public edge does for each request, in one
// pass with one response writer:
//   - its server span, named name, continuing the caller's trace (W3C trace
//     context), with the method, path and status;
//   - its request ID (RequestIDFromContext), echoed as X-Request-Id;
//   - its duration in the http.server.request.duration histogram, by
//     method and status only (a label from anything else the client chooses,
//     such as its Host header, would let it grow the metrics without bound);
//   - one access-log line;
//   - a panic in h answered 500 and logged, not a dropped connection
//     (but http.ErrAbortHandler, a response ended on purpose, goes on to
//     net/http, which drops the connection).
func Edge(h http.Handler, name string, log *slog.Logger) http.Handler {
	duration, err := otel.Meter(instrumentation).Float64Histogram("http.server.request.duration",
		metric.WithUnit("s"), metric.WithDescription("Duration of HTTP server requests."))
	if err != nil {
		log.Error("the HTTP server metric will not be recorded", "err", err)
	}
	return &edge{next: h, name: name, log: log, tracer: otel.Tracer(instrumentation), duration: duration}
}

type edge struct {
	next     http.Handler
	name     string
	log      *slog.Logger
	tracer   trace.Tracer
	duration metric.Float64Histogram
	sets     sync.Map // methodStatus → metric.RecordOption
}

type methodStatus struct {
	method string
	status int
}

func (e *edge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ctx := otel.GetTextMapPropagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	method := knownMethod(r.Method)
	ctx, span := e.tracer.Start(ctx, e.name, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("http.request.method", method), attribute.String("url.path", r.URL.Path)))
	id := requestID(r.Header.Get("X-Request-Id"))
	w.Header().Set("X-Request-Id", id)
	ctx = context.WithValue(ctx, requestIDKey{}, id)
	r = r.WithContext(ctx)
	rec := &statusRecorder{ResponseWriter: w}
	defer func() {
		p := recover()
		switch {
		case p == http.ErrAbortHandler:
			// A handler ending the response on purpose: net/http drops
			// the connection quietly once Edge has counted it.
			defer panic(p)
		case p != nil:
			e.log.ErrorContext(ctx, "panic", "panic", fmt.Sprint(p), "path", r.URL.Path)
			if rec.status == 0 {
				WriteError(rec, errs.E(errs.Internal, "panic"))
			}
		}
		status := rec.status
		if status == 0 {
			status = http.StatusOK // nothing written: net/http answers 200
		}
		elapsed := time.Since(start)
		if e.duration != nil {
			e.duration.Record(ctx, elapsed.Seconds(), e.attributes(method, status))
		}
		span.SetAttributes(attribute.Int("http.response.status_code", status))
		if status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(status))
		}
		span.End()
		e.log.InfoContext(ctx, "http", "method", r.Method, "path", r.URL.Path,
			"status", status, "ms", elapsed.Milliseconds(), "request_id", id)
	}()
	e.next.ServeHTTP(rec, r)
}

// attributes returns the metric's attribute set for a method and status,
// built once for each pair.
func (e *edge) attributes(method string, status int) metric.RecordOption {
	k := methodStatus{method, status}
	if o, ok := e.sets.Load(k); ok {
		return o.(metric.RecordOption)
	}
	o := metric.WithAttributeSet(attribute.NewSet(attribute.String("http.request.method", method), attribute.Int("http.response.status_code", status)))
	e.sets.Store(k, o)
	return o
}

// knownMethod is the method, or _OTHER for one HTTP does not define (so
// clients cannot invent span and metric values).
func knownMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "_OTHER"
}

type requestIDKey struct{}

// RequestIDFromContext returns the request ID set by Edge.
func RequestIDFromContext(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// requestID is the caller's x-request-id when it is short and printable,
// otherwise a new one.
func requestID(theirs string) string {
	if theirs == "" || len(theirs) > 128 || strings.ContainsFunc(theirs, func(c rune) bool { return c < 0x21 || c > 0x7e }) {
		return strings.ReplaceAll(uuid.NewString(), "-", "")
	}
	return theirs
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Flush lets streaming handlers flush through the recorder.
func (s *statusRecorder) Flush() { _ = s.FlushError() }

// FlushError is what http.ResponseController's Flush calls: the writer's
// own flush, with its error (a client gone).
func (s *statusRecorder) FlushError() error {
	return http.NewResponseController(s.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the real writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
