package engine

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

// Simulator starts simulator instances inside the worker process. Its name,
// "simulator", is what instances and services report as their engine.
type Simulator struct {
	Ports             Ports
	TimeToFirstToken  time.Duration
	InterTokenLatency time.Duration
	// PrefixCacheTokens is each instance's prefix cache, in tokens; 0: none.
	PrefixCacheTokens int
	// PrefillPerToken is the time per prompt token not in the cache.
	PrefillPerToken time.Duration
}

// config is the simulator configuration of an instance for spec.
func (s *Simulator) config(spec Spec) simulator.Config {
	return simulator.Config{
		ServedName: spec.ServedName, BaseModel: spec.BaseModel,
		TimeToFirstToken: s.TimeToFirstToken, InterTokenLatency: s.InterTokenLatency,
		PrefixCacheTokens: s.PrefixCacheTokens, PrefillPerToken: s.PrefillPerToken,
	}
}

// Name is the engine's name as services report it.
func (*Simulator) Name() string { return "simulator" }

// Start serves spec on a port from s.Ports.
func (s *Simulator) Start(_ context.Context, spec Spec) (Instance, error) {
	ln, err := s.Ports.Listen()
	if err != nil {
		return nil, fmt.Errorf("simulator %s: %w", spec.InstanceID, err)
	}
	srv := simulator.Start(s.config(spec), ln)
	host := s.Ports.Advertise
	if host == "" {
		host = s.Ports.Host
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	inst := &simInstance{srv: srv, base: "http://" + net.JoinHostPort(host, port), events: newEvents()}
	// It serves from the moment it listens.
	inst.events.send(Event{State: Ready})
	return inst, nil
}

type simInstance struct {
	srv    *simulator.Server
	base   string
	events *events
}

func (i *simInstance) Engine() string       { return "simulator" }
func (i *simInstance) Endpoint() string     { return i.base + "/v1" }
func (i *simInstance) HealthURL() string    { return i.base + "/health" }
func (i *simInstance) Events() <-chan Event { return i.events.ch }
func (i *simInstance) Stop(ctx context.Context) error {
	defer i.events.close()
	return i.srv.Shutdown(ctx)
}
