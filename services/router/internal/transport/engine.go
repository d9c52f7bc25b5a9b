package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
)

// EngineClient posts to engines over HTTP, with trace context.
type EngineClient struct {
	client *http.Client
}

var _ gateway.Engine = (*EngineClient)(nil)

// NewEngineClient returns a client that waits at most firstByte for an
// engine to start answering. A stream, once started, may run as long as
// the engine keeps it going.
func NewEngineClient(firstByte time.Duration) *EngineClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	tr.ResponseHeaderTimeout = firstByte
	tr.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	return &EngineClient{client: &http.Client{Transport: otelhttp.NewTransport(tr)}}
}

// Open implements gateway.Engine.
func (c *EngineClient) Open(ctx context.Context, endpoint, path string, body []byte) (int, io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, fmt.Errorf("engine request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		var netErr net.Error
		switch {
		case ctx.Err() != nil:
			return 0, nil, ctx.Err()
		case errors.As(err, &netErr) && netErr.Timeout():
			return 0, nil, errs.Wrap(errs.Timeout, err, "the engine did not answer in time")
		default:
			return 0, nil, errs.Wrap(errs.Unavailable, err, "engine %s unreachable", endpoint)
		}
	}
	return resp.StatusCode, resp.Body, nil
}
