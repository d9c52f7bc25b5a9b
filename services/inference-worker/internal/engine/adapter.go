package engine

import (
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Adapter knows how to run one engine as a process. Its method only
// computes: it starts nothing, so tests can check the exact command line.
type Adapter interface {
	// Name is the engine's name as the catalog uses it.
	Name() string
	// Command is how to run spec listening on host:port.
	Command(spec Spec, host string, port int) (Command, error)
}

// Command is how to run one engine instance.
type Command struct {
	// Program is looked up on the engine search path: "vllm".
	Program string
	// Args follow the program name.
	Args []string
	// Env is set on top of the worker's environment.
	Env map[string]string
	// Health is the path that answers 200 once the instance takes requests.
	Health string
	// Setup are requests made, in order, each time the engine becomes
	// healthy, before the instance counts as ready.
	Setup []Request
}

// Request is an HTTP request to an engine.
type Request struct {
	Method string
	Path   string
	Body   string // JSON
	// File, when set, is a local file sent as the body instead of Body:
	// model weights, for an engine that imports them.
	File string
	// Digests are local files whose SHA-256 digests stand in Path and Body
	// for "{digest N}", N being the index here, as "sha256:<hex>". They are
	// computed when the request is made, once per file version.
	Digests []string
	// SkipIfFound makes the request only when HEAD Path does not answer
	// 200: a blob the engine has already is not sent again.
	SkipIfFound bool
}

// digestOf is the placeholder for the digest of Digests[n].
func digestOf(n int) string { return "{digest " + strconv.Itoa(n) + "}" }

// Adapters are the engines that run as processes, by name.
var Adapters = map[string]Adapter{
	"vllm":      VLLM{},
	"llama.cpp": LlamaCpp{},
	"sglang":    SGLang{},
	"ollama":    Ollama{},
}

// env is the environment every adapter sets: the spec's own variables,
// then the GPUs the instance may use. A spec without GPUs sees none, so
// that a CPU model cannot take GPU memory; one the worker assigned no
// devices to sees whatever the worker sees.
func env(spec Spec) map[string]string {
	e := maps.Clone(spec.Env)
	if e == nil {
		e = map[string]string{}
	}
	switch {
	case spec.GPUs == 0:
		e["CUDA_VISIBLE_DEVICES"] = "-1"
	case len(spec.Devices) > 0:
		ids := make([]string, len(spec.Devices))
		for i, d := range spec.Devices {
			ids[i] = strconv.Itoa(d)
		}
		e["CUDA_VISIBLE_DEVICES"] = strings.Join(ids, ",")
	}
	return e
}

// check rejects what no adapter can run.
func check(engine string, spec Spec) error {
	switch {
	case spec.Source == "":
		return fmt.Errorf("%s: instance %s has no model source", engine, spec.InstanceID)
	case spec.ServedName == "":
		return fmt.Errorf("%s: instance %s has no served name", engine, spec.InstanceID)
	case spec.Adapter.Path == "" && spec.Adapter.Name != "":
		return fmt.Errorf("%s: instance %s: LoRA adapter %q has no path", engine, spec.InstanceID, spec.Adapter.Name)
	case len(spec.Devices) > 0 && len(spec.Devices) != spec.GPUs:
		return fmt.Errorf("%s: instance %s needs %d GPUs, was given %d", engine, spec.InstanceID, spec.GPUs, len(spec.Devices))
	case spec.GPUs < 0 || spec.ContextLength < 0 || spec.TensorParallel < 0 || spec.Threads < 0:
		return fmt.Errorf("%s: instance %s: negative GPUs, context length, tensor parallel size or threads", engine, spec.InstanceID)
	}
	return nil
}

// hasLoRA reports whether spec serves a LoRA adapter.
func hasLoRA(spec Spec) bool { return spec.Adapter.Path != "" }

// VLLM runs vLLM's OpenAI-compatible server.
type VLLM struct{}

// Name implements Adapter.
func (VLLM) Name() string { return "vllm" }

// Command implements Adapter. With a LoRA adapter the base model is served
// under its catalog name and the adapter under the served name, so the
// access name reaches the adapter.
func (v VLLM) Command(spec Spec, host string, port int) (Command, error) {
	if err := check(v.Name(), spec); err != nil {
		return Command{}, err
	}
	served := spec.ServedName
	if hasLoRA(spec) {
		served = spec.BaseModel
		if served == "" || served == spec.ServedName {
			served = spec.Source
		}
	}
	args := []string{"serve", spec.Source, "--served-model-name", served, "--host", host, "--port", strconv.Itoa(port)}
	if spec.ContextLength > 0 {
		args = append(args, "--max-model-len", strconv.Itoa(spec.ContextLength))
	}
	args = append(args, "--tensor-parallel-size", strconv.Itoa(max(spec.TensorParallel, 1)))
	if hasLoRA(spec) {
		args = append(args, "--enable-lora", "--lora-modules", spec.ServedName+"="+spec.Adapter.Path)
	}
	return Command{Program: "vllm", Args: args, Env: env(spec), Health: "/health"}, nil
}

// LlamaCpp runs llama.cpp's llama-server.
type LlamaCpp struct{}

// Name implements Adapter.
func (LlamaCpp) Name() string { return "llama.cpp" }

// Command implements Adapter. A source that is a GGUF file or a path (or
// a file:// URL) is loaded with -m; anything else is a Hugging Face repository, which
// llama-server downloads with -hf. Every layer goes to the GPUs when the
// instance has any. A LoRA adapter applies to every request.
func (l LlamaCpp) Command(spec Spec, host string, port int) (Command, error) {
	if err := check(l.Name(), spec); err != nil {
		return Command{}, err
	}
	model, source := "-hf", spec.Source
	if path, ok := localPath(spec.Source); ok {
		model, source = "-m", path
	}
	args := []string{model, source, "--alias", spec.ServedName, "--host", host, "--port", strconv.Itoa(port)}
	if spec.ContextLength > 0 {
		args = append(args, "-c", strconv.Itoa(spec.ContextLength))
	}
	layers := "999"
	if spec.GPUs == 0 {
		layers = "0"
	}
	args = append(args, "-ngl", layers)
	if spec.Threads > 0 {
		args = append(args, "--threads", strconv.Itoa(spec.Threads))
	}
	if hasLoRA(spec) {
		lora := spec.Adapter.Path
		if path, ok := localPath(lora); ok {
			lora = path
		}
		args = append(args, "--lora", lora)
	}
	return Command{Program: "llama-server", Args: args, Env: env(spec), Health: "/health"}, nil
}

// isPath reports whether a model source names a local file rather than a
// repository.
func isPath(source string) bool {
	return strings.HasPrefix(source, "/") || strings.HasPrefix(source, ".") ||
		strings.HasSuffix(strings.ToLower(source), ".gguf")
}

// SGLang runs SGLang's server.
type SGLang struct{}

// Name implements Adapter.
func (SGLang) Name() string { return "sglang" }

// Command implements Adapter. A LoRA adapter is loaded under the served
// name; SGLang applies it to requests that name it as
// "<served name>:<served name>" or pass it as lora_path.
func (s SGLang) Command(spec Spec, host string, port int) (Command, error) {
	if err := check(s.Name(), spec); err != nil {
		return Command{}, err
	}
	args := []string{"-m", "sglang.launch_server", "--model-path", spec.Source, "--served-model-name", spec.ServedName,
		"--host", host, "--port", strconv.Itoa(port)}
	if spec.ContextLength > 0 {
		args = append(args, "--context-length", strconv.Itoa(spec.ContextLength))
	}
	args = append(args, "--tp", strconv.Itoa(max(spec.TensorParallel, 1)))
	if hasLoRA(spec) {
		args = append(args, "--lora-paths", spec.ServedName+"="+spec.Adapter.Path)
	}
	return Command{Program: "python3", Args: args, Env: env(spec), Health: "/health"}, nil
}

// Ollama runs an Ollama server per instance.
type Ollama struct{}

// Name implements Adapter.
func (Ollama) Name() string { return "ollama" }

// Command implements Adapter. Once the server answers, the model is made
// available under the served name, so that the OpenAI API at /v1 answers
// for the access name:
//
//   - a local GGUF file (a path, or a file:// URL) is imported: its blob
//     is uploaded unless Ollama has it already, then /api/create makes the
//     model from it;
//   - an Ollama tag (ollama://name:tag, or a bare name:tag) is pulled and
//     copied to the served name, or created from when there is more to
//     add.
//
// A LoRA adapter, a local GGUF file, is uploaded the same way and created
// into the model, on an imported or a pulled base. Threads become the
// model's num_thread parameter, set by /api/create as well.
func (o Ollama) Command(spec Spec, host string, port int) (Command, error) {
	if err := check(o.Name(), spec); err != nil {
		return Command{}, err
	}
	e := env(spec)
	e["OLLAMA_HOST"] = net.JoinHostPort(host, strconv.Itoa(port))
	if spec.ContextLength > 0 {
		e["OLLAMA_CONTEXT_LENGTH"] = strconv.Itoa(spec.ContextLength)
	}
	model, local, err := ollamaSource(spec.Source)
	if err != nil {
		return Command{}, fmt.Errorf("ollama: instance %s: %w", spec.InstanceID, err)
	}
	var adapter string
	if hasLoRA(spec) {
		var ok bool
		if adapter, ok, err = ollamaSource(spec.Adapter.Path); err != nil || !ok {
			return Command{}, fmt.Errorf("ollama: instance %s: the LoRA adapter must be a local GGUF file, not %q", spec.InstanceID, spec.Adapter.Path)
		}
	}
	var setup []Request
	create := map[string]any{"model": spec.ServedName, "stream": false}
	if spec.Threads > 0 {
		create["parameters"] = map[string]any{"num_thread": spec.Threads}
	}
	var digests []string
	if local {
		digests = append(digests, model)
		setup = append(setup, uploadBlob(model, len(digests)-1, digests))
		create["files"] = map[string]string{"model.gguf": digestOf(len(digests) - 1)}
	} else {
		setup = append(setup, Request{Method: "POST", Path: "/api/pull", Body: jsonBody(map[string]any{"model": model, "stream": false})})
		create["from"] = model
	}
	if adapter != "" {
		digests = append(digests, adapter)
		setup = append(setup, uploadBlob(adapter, len(digests)-1, digests))
		create["adapters"] = map[string]string{"adapter.gguf": digestOf(len(digests) - 1)}
	}
	if local || adapter != "" || spec.Threads > 0 {
		setup = append(setup, Request{Method: "POST", Path: "/api/create", Body: jsonBody(create), Digests: digests})
	} else {
		setup = append(setup, Request{Method: "POST", Path: "/api/copy", Body: jsonBody(map[string]any{"source": model, "destination": spec.ServedName})})
	}
	return Command{Program: "ollama", Args: []string{"serve"}, Env: e, Health: "/", Setup: setup}, nil
}

// uploadBlob is the request that gives Ollama a local file as a blob,
// addressed by its digest, unless it has it already. n is the file's index
// in digests.
func uploadBlob(path string, n int, digests []string) Request {
	return Request{Method: "POST", Path: "/api/blobs/" + digestOf(n), File: path, Digests: slices.Clone(digests[:n+1]), SkipIfFound: true}
}

// ollamaSource reads a model source as Ollama takes it: a local file
// (absolute, resolved against the worker's folder when relative) or an
// Ollama model name to pull.
func ollamaSource(source string) (model string, local bool, err error) {
	if path, ok := localPath(source); ok {
		abs, err := filepath.Abs(path)
		return abs, true, err
	}
	if name, ok := strings.CutPrefix(source, "ollama://"); ok {
		source = name
	}
	if source == "" || strings.Contains(source, "://") {
		return "", false, fmt.Errorf("source %q: Ollama takes a local GGUF file (a path or file:///path) or an Ollama model (ollama://name:tag)", source)
	}
	return source, false, nil
}

// localPath returns the file a model source names: a file:// URL (on this
// host), or a path (see isPath).
func localPath(source string) (string, bool) {
	if strings.HasPrefix(source, "file://") {
		u, err := url.Parse(source)
		if err != nil || (u.Host != "" && u.Host != "localhost") || u.Path == "" {
			return "", false
		}
		return u.Path, true
	}
	if !strings.Contains(source, "://") && isPath(source) {
		return source, true
	}
	return "", false
}

// jsonBody encodes a request body; map keys come out sorted.
func jsonBody(v map[string]any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // strings and booleans always encode
	}
	return string(b)
}
