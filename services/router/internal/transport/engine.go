package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// EngineClient posts to engines over HTTP, with trace context: each call
// has a client span, from the request to the end of its answer, and sends
// its trace context to the engine.
type EngineClient struct {
	transport http.RoundTripper
}

const tracerName = "github.com/modelport/modelport/services/router/transport"

var _ gateway.Engine = (*EngineClient)(nil)

// DefaultDialTimeout bounds connecting to an engine.
const DefaultDialTimeout = 5 * time.Second

// NewEngineClient returns a client that waits at most firstByte for an
// engine to start answering and dial for a connection to one. A stream,
// once started, may run as long as the engine keeps it going (the
// gateway's idle timeout ends one that stops).
func NewEngineClient(firstByte, dial time.Duration) *EngineClient {
	if dial <= 0 {
		dial = DefaultDialTimeout
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	tr.ResponseHeaderTimeout = firstByte
	tr.DialContext = (&net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}).DialContext
	// Engines are called through the transport itself: an engine does
	// not redirect, and the timings of its calls are the router's own
	// stage metrics (engine, answer), so no HTTP client metrics are kept.
	return &EngineClient{transport: tr}
}

// Open implements gateway.Engine. It tells a request that never reached
// the engine from one that may have, by what the connection did: no
// connection (refused, timed out, unresolvable), or one that failed before
// the whole body was written, is not Sent; a failure after that is. A
// fresh connection that fails, or an engine too slow to answer, is the
// instance's fault; a kept-alive connection the engine had closed is not.
func (c *EngineClient) Open(ctx context.Context, endpoint, path string, body []byte, sent func()) (int, io.ReadCloser, error) {
	url := endpoint + path
	ctx, span := otel.Tracer(tracerName).Start(ctx, "HTTP POST", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("http.request.method", http.MethodPost), attribute.String("url.full", url)))
	status, answer, err := c.open(ctx, endpoint, url, body, sent)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.End()
		return 0, nil, err
	}
	span.SetAttributes(attribute.Int("http.response.status_code", status))
	if status >= 500 {
		span.SetStatus(codes.Error, http.StatusText(status))
	}
	return status, &tracedBody{ReadCloser: answer, span: span}, nil
}

// open sends the request and tells, on failure, how far it got.
func (c *EngineClient) open(ctx context.Context, endpoint, url string, body []byte, sent func()) (int, io.ReadCloser, error) {
	src := &bodySource{b: body, sent: sent}
	first, _ := src.open()
	var mu sync.Mutex
	var conn, reused, wrote bool
	hooks := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			mu.Lock()
			defer mu.Unlock()
			conn, reused, wrote = true, info.Reused, false
		},
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			mu.Lock()
			defer mu.Unlock()
			wrote = info.Err == nil
		},
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, hooks), http.MethodPost, url, first)
	if err != nil {
		return 0, nil, &gateway.EngineError{Err: fmt.Errorf("engine request: %w", err)}
	}
	req.ContentLength = int64(len(body))
	// The transport may send a request again on a new connection when a
	// kept-alive one failed before anything was written.
	req.GetBody = src.open
	req.Header.Set("Content-Type", "application/json")
	otel.GetTextMapPropagator().Inject(ctx, propagation.HeaderCarrier(req.Header))
	resp, err := c.transport.RoundTrip(req)
	// The request may stay referenced as long as its answer is read; only
	// the body being written may still hold the bytes.
	src.drop()
	if err == nil {
		return resp.StatusCode, resp.Body, nil
	}
	mu.Lock()
	defer mu.Unlock()
	// Bytes handed to the connection in full may have reached the engine.
	sentAll := wrote || src.wasSent()
	var netErr net.Error
	timeout := errors.As(err, &netErr) && netErr.Timeout()
	switch {
	case ctx.Err() != nil:
		return 0, nil, &gateway.EngineError{Sent: sentAll, Err: ctx.Err()}
	case !conn:
		return 0, nil, &gateway.EngineError{Faulty: true, Err: errs.Wrap(errs.Unavailable, err, "engine %s unreachable", endpoint)}
	case !sentAll:
		return 0, nil, &gateway.EngineError{Faulty: !reused, Err: errs.Wrap(errs.Unavailable, err, "engine %s dropped the connection", endpoint)}
	case timeout:
		return 0, nil, &gateway.EngineError{Sent: true, Faulty: true, Err: errs.Wrap(errs.Timeout, err, "the engine did not answer in time")}
	default:
		return 0, nil, &gateway.EngineError{Sent: true, Faulty: !reused, Err: errs.Wrap(errs.Upstream, err, "the engine closed the connection without answering")}
	}
}

// bodySource is a request's bytes, for the bodies that send them: it
// calls sent once one of them has been read to the end.
type bodySource struct {
	mu     sync.Mutex
	b      []byte
	sent   func()
	wasEnd bool
}

// open returns a body reading the bytes from the start, as long as the
// source has them (it lets go of them once the request is answered).
func (s *bodySource) open() (io.ReadCloser, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b == nil {
		return nil, errors.New("the request body is no longer held")
	}
	return &sendBody{src: s, b: s.b}, nil
}

// drop lets go of the bytes; bodies reading them keep them until done.
func (s *bodySource) drop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = nil
}

// ended records that a body was read to the end: the bytes are sent,
// and not needed again (a request is sent again only when nothing of it
// was written).
func (s *bodySource) ended() {
	s.mu.Lock()
	first := !s.wasEnd
	s.wasEnd, s.b = true, nil
	s.mu.Unlock()
	if first && s.sent != nil {
		s.sent()
	}
}

func (s *bodySource) wasSent() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wasEnd
}

// sendBody reads a request's bytes once, letting go of them at the end or
// when closed, so a request is not kept for as long as its answer
// streams.
type sendBody struct {
	src *bodySource
	mu  sync.Mutex
	b   []byte
}

func (s *sendBody) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b == nil {
		return 0, io.EOF
	}
	n := copy(p, s.b)
	s.b = s.b[n:]
	if len(s.b) == 0 {
		s.b = nil
		s.src.ended()
		return n, io.EOF
	}
	return n, nil
}

func (s *sendBody) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = nil
	return nil
}

// tracedBody is an engine's answer; its span ends with it, at its end or
// when it is closed.
type tracedBody struct {
	io.ReadCloser
	span trace.Span
	once sync.Once
}

func (b *tracedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.end(err)
	}
	return n, err
}

func (b *tracedBody) Close() error {
	err := b.ReadCloser.Close()
	b.end(nil)
	return err
}

func (b *tracedBody) end(err error) {
	b.once.Do(func() {
		if err != nil && !errors.Is(err, io.EOF) {
			b.span.RecordError(err)
			b.span.SetStatus(codes.Error, "reading the answer: "+err.Error())
		}
		b.span.End()
	})
}
