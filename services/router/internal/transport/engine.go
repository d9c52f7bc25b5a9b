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
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/metric/noop"
)

// EngineClient posts to engines over HTTP, with trace context.
type EngineClient struct {
	client *http.Client
}

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
	// Each engine request gets its client span and carries the trace
	// context; its timings are the router's own stage metrics (engine,
	// answer), so the HTTP client metrics the wrapper would also record,
	// per request, are left out.
	return &EngineClient{client: &http.Client{Transport: otelhttp.NewTransport(tr, otelhttp.WithMeterProvider(noop.NewMeterProvider()))}}
}

// Open implements gateway.Engine. It tells a request that never reached
// the engine from one that may have, by what the connection did: no
// connection (refused, timed out, unresolvable), or one that failed before
// the whole body was written, is not Sent; a failure after that is. A
// fresh connection that fails, or an engine too slow to answer, is the
// instance's fault; a kept-alive connection the engine had closed is not.
func (c *EngineClient) Open(ctx context.Context, endpoint, path string, body []byte, sent func()) (int, io.ReadCloser, error) {
	src := &bodySource{b: body, sent: sent}
	first, _ := src.open()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint+path, first)
	if err != nil {
		return 0, nil, &gateway.EngineError{Err: fmt.Errorf("engine request: %w", err)}
	}
	req.ContentLength = int64(len(body))
	// The transport may send a request again on a new connection when a
	// kept-alive one failed before anything was written.
	req.GetBody = src.open
	req.Header.Set("Content-Type", "application/json")
	var mu sync.Mutex
	var conn, reused, wrote bool
	trace := &httptrace.ClientTrace{
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
	resp, err := c.client.Do(req.WithContext(httptrace.WithClientTrace(ctx, trace)))
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
