// Package engine starts model-serving engine instances. An engine is
// anything that serves the OpenAI API over HTTP. The adapters here (vLLM,
// llama.cpp, SGLang, Ollama) know how to run one as a process: its command
// line, environment and readiness check; Process runs them under a
// supervisor, and Simulator serves inside the worker. Registry picks one by
// the name the catalog gives.
package engine

import (
	"context"
	"fmt"
	"github.com/modelport/modelport/services/inference-worker/internal/supervisor"
	"net"
	"sync"
)

// Spec is what an instance serves: the placement's names plus what the
// catalog entry of its base model gives.
type Spec struct {
	InstanceID string
	ServedName string // the name clients send as "model": the access name
	BaseModel  string // the catalog name of the base model
	Task       string
	// Engine is the catalog's engine for the model: "vllm", "llama.cpp",
	// "sglang", "ollama" or "simulator".
	Engine string
	// Source is where the weights are: a repository ID such as
	// "Qwen/Qwen2.5-7B-Instruct", a local path, or an Ollama model tag.
	Source string
	// ContextLength is the longest sequence the instance takes, in tokens;
	// 0: the engine's default.
	ContextLength int
	// GPUs is how many GPUs the instance needs; 0: none, it runs on CPUs.
	GPUs int
	// TensorParallel is how many GPUs one copy of the model is split over;
	// 0 or 1: not split.
	TensorParallel int
	// Adapter is the LoRA adapter served on top of the base model; the
	// zero value for a base model.
	Adapter LoRA
	// Env is added to the engine's environment.
	Env map[string]string
	// Devices are the GPU indices the worker assigned to the instance, as
	// CUDA numbers them; empty when the worker does not assign GPUs.
	Devices []int
	// Threads is how many CPU threads the engine computes with; 0: the
	// engine decides (llama.cpp and Ollama take every core). Process sets
	// it for instances without GPUs from its CPUThreads.
	Threads int
}

// LoRA is a low-rank adapter: a name for people and where its weights are.
type LoRA struct {
	Name string
	Path string
}

// Instance is a started engine instance. Its methods are safe for
// concurrent use.
type Instance interface {
	// Engine names the engine that runs it, as instance records report it.
	Engine() string
	// Endpoint is the instance's OpenAI base URL, ending in /v1.
	Endpoint() string
	// Events reports the instance's changes of state: Ready once it takes
	// requests, Starting while a crashed engine restarts, Ready again, and
	// finally Failed when it is given up on; the channel is closed after
	// Failed or Stop. Sending never blocks the instance: a change the
	// reader has not taken yet is replaced by the next, so a slow reader
	// sees the latest state, and Failed is always the last value.
	Events() <-chan Event
	// Stop ends the instance and waits for it. An instance that failed
	// still needs Stop to release its port.
	Stop(ctx context.Context) error
}

// State is where an instance is in its life.
type State string

// The states an instance reports.
const (
	Starting State = "starting"
	Ready    State = "ready"
	Failed   State = "failed"
)

// Event is a change of an instance's state.
type Event struct {
	State State
	// Restarts counts the engine's restarts after crashes so far.
	Restarts int
	// Failure says why, when State is Failed.
	Failure *Failure
}

// Failure is why an instance was given up on: the supervisor's account
// for engine processes, the same shape for any other engine.
type Failure = supervisor.Failure

// Engine starts instances of one serving engine.
type Engine interface {
	// Name is the engine's name as the catalog and instance records use it.
	Name() string
	// Start starts an instance of spec and returns once it is started, not
	// once it is ready: its Events say when.
	Start(ctx context.Context, spec Spec) (Instance, error)
}

// events delivers an instance's events without blocking the sender: it
// holds at most one unread event, which the next replaces.
type events struct {
	mu     sync.Mutex
	ch     chan Event
	closed bool
}

func newEvents() *events { return &events{ch: make(chan Event, 1)} }

// send delivers ev; after Failed, or after close, it delivers nothing more.
func (e *events) send(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	select {
	case <-e.ch: // the reader has not taken it: the newer state wins
	default:
	}
	e.ch <- ev // never blocks: the channel is empty and only send fills it
	if ev.State == Failed {
		close(e.ch)
		e.closed = true
	}
}

func (e *events) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.closed {
		close(e.ch)
		e.closed = true
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
