// Package app wires the inference-worker: settings, the engine, the worker,
// its placement and release consumers and heartbeats. The service binary and the
// all-in-one binary both start it through Start.
package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/runner"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/inference-worker/internal/engine"
	"github.com/modelport/modelport/services/inference-worker/internal/transport"
	"github.com/modelport/modelport/services/inference-worker/internal/worker"
)

// Config is the worker's settings.
type Config struct {
	ID                string        // MODELPORT_WORKER_ID; default: host name and a random suffix
	Capacity          int           // MODELPORT_WORKER_CAPACITY: instances it holds
	ListenHost        string        // MODELPORT_WORKER_LISTEN_HOST: where instances listen
	AdvertiseHost     string        // MODELPORT_WORKER_ADVERTISE_HOST: how the router reaches them
	FirstPort         int           // MODELPORT_WORKER_PORTS "9100-9131"; 0: any free port
	LastPort          int           //
	Heartbeat         time.Duration // MODELPORT_WORKER_HEARTBEAT
	TimeToFirstToken  time.Duration // MODELPORT_SIM_TTFT: the simulator's time to first token
	InterTokenLatency time.Duration // MODELPORT_SIM_ITL: the simulator's time per further token
	PrefixCacheTokens int           // MODELPORT_SIM_PREFIX_CACHE: each simulator instance's prefix cache, in tokens
	PrefillPerToken   time.Duration // MODELPORT_SIM_PREFILL: the simulator's time per prompt token not in its prefix cache
	GPUs              int           // MODELPORT_WORKER_GPUS; default: the GPUs nvidia-smi lists, else 0
	Engines           []string      // MODELPORT_WORKER_ENGINES: real engines this worker may run, e.g. "vllm,llama.cpp"
	CatalogFile       string        // MODELPORT_CATALOG: a catalog file replacing the built-in one

	// Memory is what the worker's instances may use in all
	// (MODELPORT_WORKER_MEMORY, bytes or a size such as 48GiB); default:
	// the machine's memory. GPUMemory is each GPU's
	// (MODELPORT_WORKER_GPU_MEMORY); default: the smallest nvidia-smi
	// lists. Heartbeats advertise both; the scaler places by them.
	Memory    int64
	GPUMemory int64
	// EnginePath is where engine programs are looked up, a list like
	// $PATH (MODELPORT_WORKER_ENGINE_PATH); empty: $PATH, then the folder
	// of the worker's own binary.
	EnginePath string
	// CPUThreads caps the CPU threads of each engine instance that runs
	// without GPUs (MODELPORT_WORKER_CPU_THREADS); 0: the engine decides.
	CPUThreads int
}

// DefaultPrefixCacheTokens is a simulator instance's prefix cache when
// MODELPORT_SIM_PREFIX_CACHE is not set: about what a 7B model's KV cache
// holds on one 80 GB GPU. Engines cache prefixes by default; so does the
// simulator.
const DefaultPrefixCacheTokens = 1 << 17

// ConfigFromEnv reads Config.
func ConfigFromEnv(getenv config.Getenv) (Config, error) {
	host, _ := os.Hostname()
	c := Config{
		ID:            config.String(getenv, "MODELPORT_WORKER_ID", fmt.Sprintf("%s-%s", sanitize(host), uuid.NewString()[:8])),
		ListenHost:    config.String(getenv, "MODELPORT_WORKER_LISTEN_HOST", "127.0.0.1"),
		AdvertiseHost: getenv("MODELPORT_WORKER_ADVERTISE_HOST"),
	}
	var err error
	if c.Capacity, err = config.Int(getenv, "MODELPORT_WORKER_CAPACITY", 16); err != nil {
		return c, err
	}
	if c.Heartbeat, err = config.Duration(getenv, "MODELPORT_WORKER_HEARTBEAT", 2*time.Second); err != nil {
		return c, err
	}
	if c.TimeToFirstToken, err = config.Duration(getenv, "MODELPORT_SIM_TTFT", 0); err != nil {
		return c, err
	}
	if c.InterTokenLatency, err = config.Duration(getenv, "MODELPORT_SIM_ITL", 0); err != nil {
		return c, err
	}
	if c.PrefixCacheTokens, err = config.Int(getenv, "MODELPORT_SIM_PREFIX_CACHE", DefaultPrefixCacheTokens); err != nil {
		return c, err
	}
	if c.PrefillPerToken, err = config.Duration(getenv, "MODELPORT_SIM_PREFILL", 0); err != nil {
		return c, err
	}
	if c.GPUs, err = config.Int(getenv, "MODELPORT_WORKER_GPUS", -1); err != nil {
		return c, err
	}
	if c.CPUThreads, err = config.Int(getenv, "MODELPORT_WORKER_CPU_THREADS", 0); err != nil {
		return c, err
	}
	if c.GPUs < 0 {
		c.GPUs = countGPUs()
	}
	if c.Memory, err = sizeSetting(getenv, "MODELPORT_WORKER_MEMORY", machineMemory); err != nil {
		return c, err
	}
	if c.GPUMemory, err = sizeSetting(getenv, "MODELPORT_WORKER_GPU_MEMORY", gpuMemory); err != nil {
		return c, err
	}
	if c.GPUs == 0 {
		c.GPUMemory = 0
	}
	for _, e := range strings.Split(getenv("MODELPORT_WORKER_ENGINES"), ",") {
		if e = strings.TrimSpace(e); e != "" {
			c.Engines = append(c.Engines, e)
		}
	}
	c.CatalogFile = getenv("MODELPORT_CATALOG")
	c.EnginePath = getenv("MODELPORT_WORKER_ENGINE_PATH")
	if r := getenv("MODELPORT_WORKER_PORTS"); r != "" {
		first, last, ok := strings.Cut(r, "-")
		a, err1 := strconv.Atoi(first)
		b, err2 := strconv.Atoi(last)
		if !ok || err1 != nil || err2 != nil || a < 1 || b < a || b > 65535 {
			return c, fmt.Errorf("MODELPORT_WORKER_PORTS: %q is not a range like 9100-9131", r)
		}
		c.FirstPort, c.LastPort = a, b
	}
	return c, c.Validate()
}

// Validate checks the settings.
func (c Config) Validate() error {
	switch {
	case !workerIDPattern.MatchString(c.ID):
		return fmt.Errorf("MODELPORT_WORKER_ID %q must be 1-64 letters, digits, '-' or '_'", c.ID)
	case c.Capacity < 1:
		return fmt.Errorf("MODELPORT_WORKER_CAPACITY must be at least 1")
	case c.Heartbeat <= 0 || c.Heartbeat >= state.WorkerTTL:
		return fmt.Errorf("MODELPORT_WORKER_HEARTBEAT must be between 0 and %s", state.WorkerTTL)
	case c.PrefixCacheTokens < 0:
		return fmt.Errorf("MODELPORT_SIM_PREFIX_CACHE must not be negative (0 caches nothing)")
	case c.PrefillPerToken < 0:
		return fmt.Errorf("MODELPORT_SIM_PREFILL must not be negative")
	case c.CPUThreads < 0:
		return fmt.Errorf("MODELPORT_WORKER_CPU_THREADS cannot be negative")
	}
	for _, e := range c.Engines {
		if _, ok := engine.Adapters[e]; !ok {
			return fmt.Errorf("MODELPORT_WORKER_ENGINES: %q is not an engine (vllm, llama.cpp, sglang, ollama)", e)
		}
	}
	return nil
}

// countGPUs asks nvidia-smi how many GPUs the machine has; none without it.
func countGPUs() int {
	out, err := exec.Command("nvidia-smi", "-L").Output()
	if err != nil {
		return 0
	}
	return strings.Count(string(out), "GPU ")
}

// specs completes a placement's spec from the catalog, and decides where
// it runs: on the catalog's engine where this worker may run it and has
// the GPUs, else on the simulator, which then says so in every answer and
// in the instance's engine.
func specs(cat *catalog.Catalog, cfg Config) worker.SpecFunc {
	return func(spec engine.Spec) (engine.Spec, error) {
		m, ok := cat.Lookup(spec.BaseModel)
		if !ok {
			return spec, errs.E(errs.Invalid, "base model %q is not in this worker's catalog", spec.BaseModel)
		}
		spec.Source, spec.ContextLength, spec.GPUs, spec.TensorParallel = m.Source, m.ContextLength, m.GPUs, m.TensorParallel
		if m.FineTuned() {
			spec.Adapter = engine.LoRA{Name: spec.ServedName, Path: m.Adapter}
		}
		return runsOn(spec, m.Engine, cfg), nil
	}
}

// runsOn sets the engine: the model's where this worker may run it and
// has the GPUs, else the simulator, which then says so in every answer
// and in the instance's engine.
func runsOn(spec engine.Spec, eng string, cfg Config) engine.Spec {
	spec.Engine = eng
	if !slices.Contains(cfg.Engines, eng) || spec.GPUs > cfg.GPUs {
		spec.Engine, spec.GPUs = "simulator", 0
	}
	return spec
}

// enginePath is where the worker looks for engine programs: the
// configured list, or else $PATH and then the folder of the worker's own
// binary, so that engines installed beside it (make engines links them
// into bin/) are found without touching $PATH.
func enginePath(configured, path, exe string) string {
	if configured != "" {
		return configured
	}
	if exe == "" {
		return path
	}
	dir := filepath.Dir(exe)
	if path == "" {
		return dir
	}
	return path + string(filepath.ListSeparator) + dir
}

// workerIDPattern keeps worker IDs usable as key-value keys and as the
// last token of the placement subject.
var workerIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// sanitize turns a host name into a worker ID prefix.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 128 && (r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return r
		}
		return '-'
	}, s)
	return s[:min(len(s), 40)]
}

// Start starts a worker on bus: stale records from an earlier run under the
// same ID are cleared, heartbeats begin, and placements are consumed.
func Start(ctx context.Context, cfg Config, bus *natsx.Bus, log *slog.Logger) (runner.Service, error) {
	log = log.With("worker_id", cfg.ID)
	store := &transport.Store{Instances: bus.KV(state.BucketInstances), Workers: bus.KV(state.BucketWorkers), Placements: bus.KV(state.BucketPlacements)}
	stale, err := store.StaleInstances(ctx, cfg.ID)
	if err != nil {
		return runner.Service{}, err
	}
	for _, in := range stale {
		if err := store.DeleteInstance(ctx, in.ServiceID, in.ID); err != nil {
			return runner.Service{}, err
		}
		if err := bus.Publisher.Publish(ctx, events.InstanceStoppedV1{
			Meta: events.NewMeta(), InstanceID: in.ID, ServiceID: in.ServiceID, WorkerID: cfg.ID, Reason: "worker restarted",
		}); err != nil {
			return runner.Service{}, err
		}
	}

	cat, err := catalog.Load(cfg.CatalogFile)
	if err != nil {
		return runner.Service{}, err
	}
	exe, _ := os.Executable()
	eng := &engine.Registry{
		Ports:            engine.Ports{Host: cfg.ListenHost, First: cfg.FirstPort, Last: cfg.LastPort, Advertise: cfg.AdvertiseHost},
		SearchPath:       enginePath(cfg.EnginePath, os.Getenv("PATH"), exe),
		CPUThreads:       cfg.CPUThreads,
		Log:              log,
		TimeToFirstToken: cfg.TimeToFirstToken, InterTokenLatency: cfg.InterTokenLatency,
		PrefixCacheTokens: cfg.PrefixCacheTokens, PrefillPerToken: cfg.PrefillPerToken,
	}
	w := worker.New(cfg.ID, cfg.Capacity, eng, store, bus.Publisher, log, worker.WithSpecs(specs(cat, cfg)),
		worker.WithModels(modelSpecs(cat, cfg)), worker.WithGPUs(cfg.GPUs), worker.WithMemory(cfg.Memory, cfg.GPUMemory))
	if err := w.Heartbeat(ctx); err != nil {
		return runner.Service{}, err
	}
	beatCtx, stopBeats := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(cfg.Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-beatCtx.Done():
				return
			case <-t.C:
				if err := w.Heartbeat(beatCtx); err != nil && beatCtx.Err() == nil {
					log.Warn("heartbeat", "err", err)
				}
			}
		}
	}()
	// Placements made before this start (the worker restarted) run again.
	placed, err := store.PlacedOn(ctx, cfg.ID)
	if err != nil {
		stopBeats()
		return runner.Service{}, err
	}
	for _, p := range placed {
		go func() {
			ev := events.InstancePlacedV1{
				Meta: events.NewMeta(), InstanceID: p.InstanceID, ServiceID: p.ServiceID, WorkerID: p.WorkerID,
				AccessName: p.AccessName, BaseModel: p.BaseModel, Task: p.Task, Engine: p.Engine, Model: p.Model,
			}
			if err := w.StartInstance(beatCtx, ev); err != nil {
				log.Warn("restart placed instance", "instance_id", p.InstanceID, "err", err)
			}
		}()
	}
	if err := transport.ConsumePlacements(ctx, bus.JS, w, log); err != nil {
		stopBeats()
		return runner.Service{}, err
	}
	if err := transport.ConsumeReleases(ctx, bus.JS, w, log); err != nil {
		stopBeats()
		return runner.Service{}, err
	}
	log.Info("worker started", "capacity", cfg.Capacity, "gpus", cfg.GPUs, "engines", cfg.Engines, "engine_path", eng.SearchPath,
		"memory", cfg.Memory, "gpu_memory", cfg.GPUMemory)
	return runner.Service{Stop: func(ctx context.Context) {
		stopBeats()
		w.Shutdown(ctx, "worker stopped")
		_ = bus.KV(state.BucketWorkers).Delete(ctx, cfg.ID)
	}}, nil
}
