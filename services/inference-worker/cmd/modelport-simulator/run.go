package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

// shutdownGrace is how long requests in flight get to finish after a
// stop signal before their connections are closed.
const shutdownGrace = 5 * time.Second

// run serves what args ask for until ctx ends, then shuts down and
// returns nil. args[0] names the engine to impersonate, by its base name.
// An *exitError asks for a particular exit code.
func run(ctx context.Context, args []string, getenv config.Getenv, stdout, stderr io.Writer) error {
	began := time.Now()
	if len(args) == 0 {
		args = []string{"modelport-simulator"}
	}
	args = append([]string{filepath.Base(args[0])}, args[1:]...)
	if path := getenv("MODELPORT_SIM_RECORD"); path != "" {
		if err := record(path, args); err != nil {
			return err
		}
	}
	if v := getenv("MODELPORT_SIM_EXIT_AT_START"); v != "" {
		code, err := strconv.Atoi(v)
		if err != nil {
			return usage("MODELPORT_SIM_EXIT_AT_START: %q is not an exit code", v)
		}
		fmt.Fprintln(stderr, "simulated start failure")
		return &exitError{code: code}
	}
	env, err := envSettings(getenv)
	if err != nil {
		return usage("%v", err)
	}
	l, err := parse(args, env, getenv, stdout, stderr)
	if err != nil || l == nil { // nil, nil: help was asked for
		return err
	}
	if err := validate(l.cfg); err != nil {
		return usage("%v", err)
	}

	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	sim := simulator.New(l.cfg)
	for _, m := range l.extra {
		sim.AddModel(m.Name, m.BaseModel)
	}
	reqCtx, abort := context.WithCancel(context.WithoutCancel(ctx))
	defer abort()
	srv := &http.Server{
		Handler:           l.routes(sim),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(stderr, "modelport-simulator as %s: %s; every answer says it is simulated, none is real model output\n", l.engine, l.describe(sim))
	fmt.Fprintf(stderr, "listening on %s\n", ln.Addr())

	var crash <-chan time.Time
	if env.crashAfter > 0 {
		t := time.NewTimer(env.crashAfter - time.Since(began))
		defer t.Stop()
		crash = t.C
	}
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			abort() // streams still running end now
			_ = srv.Close()
		}
		return nil
	case <-crash:
		_ = srv.Close()
		fmt.Fprintln(stderr, "simulated crash")
		return &exitError{code: 3}
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	}
}

// recordPrefixes are the environment variables a record keeps: those that
// steer the engines and the simulator's own.
var recordPrefixes = []string{"CUDA_", "VLLM_", "OLLAMA_", "HF_", "LLAMA_", "SGLANG_", "MODELPORT_SIM_"}

// record writes how the process was started to path, whole or not at all,
// for a test to read: the arguments and the variables of the process
// environment named by recordPrefixes.
func record(path string, args []string) error {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		name, value, _ := strings.Cut(kv, "=")
		for _, p := range recordPrefixes {
			if strings.HasPrefix(name, p) {
				env[name] = value
				break
			}
		}
	}
	b, err := json.MarshalIndent(map[string]any{"argv": args, "env": env}, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("MODELPORT_SIM_RECORD: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("MODELPORT_SIM_RECORD: %w", err)
	}
	return nil
}

// settings are what the environment sets in every mode.
type settings struct {
	cfg        simulator.Config // latency, load and failure fields only
	crashAfter time.Duration
}

func envSettings(getenv config.Getenv) (settings, error) {
	var s settings
	var errs []error
	duration := func(name string, d *time.Duration) {
		var err error
		*d, err = config.Duration(getenv, name, 0)
		errs = append(errs, err)
	}
	integer := func(name string, n *int) {
		var err error
		*n, err = config.Int(getenv, name, 0)
		errs = append(errs, err)
	}
	duration("MODELPORT_SIM_TTFT", &s.cfg.TimeToFirstToken)
	duration("MODELPORT_SIM_ITL", &s.cfg.InterTokenLatency)
	duration("MODELPORT_SIM_PREFILL", &s.cfg.PrefillPerToken)
	duration("MODELPORT_SIM_SLOW_START", &s.cfg.SlowStart)
	duration("MODELPORT_SIM_CRASH_AFTER", &s.crashAfter)
	integer("MODELPORT_SIM_PREFIX_CACHE", &s.cfg.PrefixCacheTokens)
	integer("MODELPORT_SIM_MAX_CONCURRENT", &s.cfg.MaxConcurrent)
	integer("MODELPORT_SIM_MAX_QUEUE", &s.cfg.MaxQueue)
	integer("MODELPORT_SIM_CRASH_AFTER_TOKENS", &s.cfg.CrashAfterTokens)
	if v := getenv("MODELPORT_SIM_ERROR_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil {
			err = fmt.Errorf("MODELPORT_SIM_ERROR_RATE: %q is not a number", v)
		}
		s.cfg.ErrorRate = r
		errs = append(errs, err)
	}
	if v := getenv("MODELPORT_SIM_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			err = fmt.Errorf("MODELPORT_SIM_SEED: %q is not a seed", v)
		}
		s.cfg.Seed = n
		errs = append(errs, err)
	}
	return s, errors.Join(errs...)
}

// validate rejects settings the simulator cannot honour.
func validate(cfg simulator.Config) error {
	switch {
	case cfg.TimeToFirstToken < 0 || cfg.InterTokenLatency < 0 || cfg.SlowStart < 0 || cfg.PrefillPerToken < 0:
		return errors.New("latencies and the slow start must not be negative")
	case cfg.MaxConcurrent < 0 || cfg.MaxQueue < 0 || cfg.CrashAfterTokens < 0 || cfg.PrefixCacheTokens < 0:
		return errors.New("max-concurrent, max-queue, crash-after-tokens and prefix-cache must not be negative")
	case cfg.ErrorRate < 0 || cfg.ErrorRate > 1:
		return fmt.Errorf("the error rate must be between 0 and 1, not %g", cfg.ErrorRate)
	}
	return nil
}
