package transport

import (
	"bytes"
	"context"
	"fmt"
	"io"
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

// NewEngineClient returns a client whose requests end after timeout.
func NewEngineClient(timeout time.Duration) *EngineClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	return &EngineClient{client: &http.Client{Timeout: timeout, Transport: otelhttp.NewTransport(tr)}}
}

// Post implements gateway.Engine.
func (c *EngineClient) Post(ctx context.Context, endpoint, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, fmt.Errorf("engine request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, nil, ctx.Err()
		}
		return 0, nil, errs.Wrap(errs.Unavailable, err, "engine %s unreachable", endpoint)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, errs.Wrap(errs.Internal, err, "read engine answer")
	}
	return resp.StatusCode, out, nil
}
