// Package engine starts model-serving engine instances and checks their
// readiness. An engine is anything that serves the OpenAI API over HTTP;
// the adapters here know how to start one and where it listens.
package engine

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Spec is what an instance serves.
type Spec struct {
	InstanceID string
	ServedName string // the name clients send as "model": the access name
	BaseModel  string
	Task       string
}

// Instance is a started engine instance.
type Instance interface {
	// Endpoint is the instance's OpenAI base URL, ending in /v1.
	Endpoint() string
	// HealthURL answers 200 once the instance takes requests.
	HealthURL() string
	// Stop ends the instance and waits for it.
	Stop(ctx context.Context) error
}

// WaitReady polls the instance's health URL until it answers 200 or ctx ends.
func WaitReady(ctx context.Context, inst Instance) error {
	client := &http.Client{Timeout: 2 * time.Second}
	tick := 20 * time.Millisecond
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, inst.HealthURL(), nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("instance %s not ready: %w (last: %v)", inst.Endpoint(), ctx.Err(), err)
		case <-time.After(tick):
			tick = min(2*tick, time.Second)
		}
	}
}

// Ports hands out listening sockets for instances: from a fixed range, so
// a firewall or container can expose them, or any free port when the
// range is empty.
type Ports struct {
	Host      string // address to listen on
	First     int
	Last      int
	Advertise string // host name others use to reach the instances
}

// Listen returns a listener on the first free port of the range.
func (p Ports) Listen() (net.Listener, error) {
	if p.First == 0 {
		return net.Listen("tcp", net.JoinHostPort(p.Host, "0"))
	}
	for port := p.First; port <= p.Last; port++ {
		ln, err := net.Listen("tcp", net.JoinHostPort(p.Host, fmt.Sprint(port)))
		if err == nil {
			return ln, nil
		}
	}
	return nil, fmt.Errorf("no free port in %d-%d", p.First, p.Last)
}
