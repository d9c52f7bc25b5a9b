package supervisor

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// healthClient polls engines on this host: never through a proxy, and with
// a timeout per poll so a wedged engine cannot stall the loop.
var healthClient = &http.Client{
	Timeout:   2 * time.Second,
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
}

// waitHealthy polls url until it answers 200 or ctx ends. Polls start 20ms
// apart and back off to maxInterval. Any other status, 503 while an engine
// loads its weights included, means not yet.
func waitHealthy(ctx context.Context, url string, maxInterval time.Duration) error {
	tick := 20 * time.Millisecond
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := healthClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else if ctx.Err() == nil || last == "" {
			// A poll the deadline cut short says nothing of the
			// engine: the answer before it does.
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy: %w (last: %s)", url, ctx.Err(), last)
		case <-time.After(tick):
			tick = min(2*tick, max(maxInterval, 20*time.Millisecond))
		}
	}
}
