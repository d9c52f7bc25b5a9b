package engine

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
	"github.com/modelport/modelport/services/inference-worker/internal/supervisor"
)

// Registry is the engines a worker runs, by the names the catalog uses:
// "vllm", "llama.cpp", "sglang" and "ollama" as supervised processes, and
// "simulator" inside the worker. Its engines share one pool of ports. Set
// the fields before the first call; it is then safe for concurrent use.
type Registry struct {
	// Ports are where instances listen and how others reach them.
	Ports Ports
	// SearchPath is where engine programs are looked up, a list like
	// $PATH; empty: the PATH in Environ.
	SearchPath string
	// Environ is the environment engine processes start from; nil: the
	// worker's own.
	Environ []string
	// Policy is how engine processes are supervised.
	Policy supervisor.Policy
	// Log receives the engines' output at debug level and their life events.
	Log *slog.Logger
	// TimeToFirstToken and InterTokenLatency shape the simulator's
	// answers; PrefixCacheTokens and PrefillPerToken its prefix cache and
	// prefill time (see simulator.Config).
	TimeToFirstToken  time.Duration
	InterTokenLatency time.Duration
	PrefixCacheTokens int
	PrefillPerToken   time.Duration
	// Override, when set, runs every instance on this engine whatever its
	// spec names: "simulator" on a machine without GPUs.
	Override string
	// CPUThreads, when above 0, caps the CPU threads of engine processes
	// that run without GPUs (see Process.CPUThreads).
	CPUThreads int

	once    sync.Once
	engines map[string]Engine
}

func (r *Registry) init() {
	r.once.Do(func() {
		pool := &portPool{}
		r.engines = map[string]Engine{
			"simulator": &pooledSimulator{sim: Simulator{Ports: r.Ports, TimeToFirstToken: r.TimeToFirstToken, InterTokenLatency: r.InterTokenLatency,
				PrefixCacheTokens: r.PrefixCacheTokens, PrefillPerToken: r.PrefillPerToken}, pool: pool},
		}
		for name, a := range Adapters {
			r.engines[name] = &Process{
				Adapter: a, Ports: r.Ports, SearchPath: r.SearchPath, Environ: r.Environ,
				Policy: r.Policy, Log: r.Log, CPUThreads: r.CPUThreads, pool: pool,
			}
		}
	})
}

// Names lists the engines, sorted.
func (r *Registry) Names() []string {
	r.init()
	names := make([]string, 0, len(r.engines))
	for n := range r.engines {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ForName returns the engine the catalog calls name. An unknown name is an
// errs.Invalid error.
func (r *Registry) ForName(name string) (Engine, error) {
	r.init()
	e, ok := r.engines[name]
	if !ok {
		return nil, errs.E(errs.Invalid, "unknown engine %q (have %v)", name, r.Names())
	}
	return e, nil
}

// Start starts spec on the engine it names, or on Override when set. The
// worker calls it for every placement.
func (r *Registry) Start(ctx context.Context, spec Spec) (Instance, error) {
	name := spec.Engine
	if r.Override != "" {
		name = r.Override
	}
	e, err := r.ForName(name)
	if err != nil {
		return nil, fmt.Errorf("instance %s: %w", spec.InstanceID, err)
	}
	return e.Start(ctx, spec)
}

// pooledSimulator is the Simulator on the registry's port pool, so that it
// never takes a port handed to an engine process that has not bound it yet.
type pooledSimulator struct {
	sim  Simulator
	pool *portPool
}

func (s *pooledSimulator) Name() string { return s.sim.Name() }

func (s *pooledSimulator) Start(_ context.Context, spec Spec) (Instance, error) {
	ln, err := s.pool.listen(s.sim.Ports)
	if err != nil {
		return nil, fmt.Errorf("simulator %s: %w", spec.InstanceID, err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	srv := simulator.Start(s.sim.config(spec), ln)
	host := s.sim.Ports.Advertise
	if host == "" {
		host = s.sim.Ports.Host
	}
	inst := &simInstance{srv: srv, base: "http://" + net.JoinHostPort(host, strconv.Itoa(port)), events: newEvents()}
	inst.events.send(Event{State: Ready})
	return &pooledInstance{Instance: inst, release: sync.OnceFunc(func() { s.pool.release(port) })}, nil
}

// pooledInstance gives its port back to the pool when stopped.
type pooledInstance struct {
	Instance
	release func()
}

func (i *pooledInstance) Stop(ctx context.Context) error {
	defer i.release()
	return i.Instance.Stop(ctx)
}

var (
	_ Engine = (*Simulator)(nil)
	_ Engine = (*pooledSimulator)(nil)
)
