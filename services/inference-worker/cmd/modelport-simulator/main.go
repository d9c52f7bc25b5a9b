// Command modelport-simulator serves Modelport's simulator engine as its
// own process: an OpenAI-compatible server whose every answer says it is
// simulated.
//
// Run under its own name it takes flags:
//
//	modelport-simulator --served-model-name NAME [--model BASE] [--host 127.0.0.1] [--port 8000]
//	    [--ttft D] [--itl D] [--prefill D] [--prefix-cache N] [--max-concurrent N] [--max-queue N] [--error-rate R]
//	    [--crash-after-tokens N] [--slow-start D] [--seed N]
//
// Copied or linked under a real engine's command name, it accepts that
// engine's command line and speaks enough of its API to stand in for it in
// tests of the code that runs engines:
//
//	vllm serve MODEL [--host H] [--port 8000] [--served-model-name N] [--lora-modules NAME=PATH...] ...
//	llama-server -m PATH [--alias N] [--host H] [--port 8080] ...
//	python3 -m sglang.launch_server --model-path P [--served-model-name N] [--host H] [--port 30000] ...
//	ollama serve   (listening on OLLAMA_HOST, 127.0.0.1:11434 by default)
//
// Options it does not know are accepted and ignored. Every mode listens on
// 127.0.0.1 unless told otherwise, prints "listening on HOST:PORT" to
// standard error once it takes requests, and shuts down gracefully and
// exits 0 on SIGINT or SIGTERM.
//
// Environment hooks, in every mode:
//
//	MODELPORT_SIM_RECORD=FILE          write {"argv":[...],"env":{...}} at start: the arguments,
//	                                   argv[0] as its base name, and the CUDA_, VLLM_, OLLAMA_,
//	                                   HF_, LLAMA_, SGLANG_ and MODELPORT_SIM_ variables
//	MODELPORT_SIM_EXIT_AT_START=CODE   print "simulated start failure" and exit with CODE
//	MODELPORT_SIM_CRASH_AFTER=D        exit with code 3 after D
//	MODELPORT_SIM_IGNORE_SIGTERM=1     ignore SIGTERM: only SIGINT or SIGKILL stop it
//	MODELPORT_SIM_SLOW_START=D         health answers 503 for D after start
//	MODELPORT_SIM_TTFT=D, MODELPORT_SIM_ITL=D, MODELPORT_SIM_PREFILL=D (per uncached prompt token),
//	MODELPORT_SIM_PREFIX_CACHE=N (tokens; 0 caches nothing),
//	MODELPORT_SIM_MAX_CONCURRENT=N, MODELPORT_SIM_MAX_QUEUE=N, MODELPORT_SIM_ERROR_RATE=R,
//	MODELPORT_SIM_CRASH_AFTER_TOKENS=N, MODELPORT_SIM_SEED=N
//
// Flags, in the simulator's own mode, win over the environment.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stopOn := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if os.Getenv("MODELPORT_SIM_IGNORE_SIGTERM") == "1" {
		// An engine that hangs on shutdown, for tests of what kills it.
		signal.Ignore(syscall.SIGTERM)
		stopOn = stopOn[:1]
	}
	ctx, stop := signal.NotifyContext(context.Background(), stopOn...)
	err := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitError ends the process with code; main prints msg when it is set.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// usage is a command line the simulator cannot run: exit code 2, as
// argument parsers use.
func usage(format string, args ...any) error {
	return &exitError{code: 2, msg: fmt.Sprintf(format, args...)}
}

// exitCode prints err, if it says anything, and returns the code to exit
// with: 0 for nil, an exitError's own code, 1 for anything else.
func exitCode(err error, stderr *os.File) int {
	if err == nil {
		return 0
	}
	code := 1
	if ee, ok := errors.AsType[*exitError](err); ok {
		code = ee.code
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintln(stderr, "modelport-simulator:", msg)
	}
	return code
}
