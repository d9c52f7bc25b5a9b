package models

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/modelport/modelport/libs/catalog"
)

// Tasks.
const (
	taskText   = "text-generation"
	taskVision = "image-understanding"
	taskImage  = "image-generation"
)

// engineTasks are the tasks each engine serves. The simulator serves
// every task, with answers that say they are simulated.
var engineTasks = map[string][]string{
	"vllm":      {taskText, taskVision},
	"sglang":    {taskText, taskVision},
	"llama.cpp": {taskText},
	"ollama":    {taskText, taskVision},
	"simulator": {taskText, taskVision, taskImage},
}

// formatEngines are the engines that load each weight format, the
// default first.
var formatEngines = map[string][]string{
	catalog.FormatGGUF:        {"ollama", "llama.cpp", "simulator"},
	catalog.FormatSafetensors: {"vllm", "sglang", "simulator"},
	catalog.FormatOllama:      {"ollama", "simulator"},
}

// schemeEngines limits the engines by where the weights are, for the
// schemes not every engine reads: only vLLM and SGLang stream weights from
// S3.
var schemeEngines = map[string][]string{
	catalog.SchemeS3: {"vllm", "sglang", "simulator"},
}

// Bounds of a registration.
const (
	maxGPUs          = 16
	maxContextLength = 1 << 21
	maxMemoryGiB     = 16 << 10
	maxDisplayName   = 128
	// defaultContextCap bounds the context length a model gets when its
	// registrant gives none: the trained one, at most this. Long contexts
	// cost memory an instance reserves whether it uses it or not.
	defaultContextCap = 8192
)

// engineFor returns the engine for weights of format at src: the one
// asked for if it can load them, else the format's default.
func engineFor(asked string, src catalog.Source, format string) (string, error) {
	if asked != "" && !slices.Contains(catalog.Engines, asked) {
		return "", fmt.Errorf("unknown engine %q: want one of %s", asked, strings.Join(catalog.Engines, ", "))
	}
	engines, ok := formatEngines[format]
	if !ok {
		if asked == "" {
			return "", fmt.Errorf("cannot tell the weights' format from %s: give the engine", src)
		}
		engines = []string{asked}
	}
	if only, ok := schemeEngines[src.Scheme]; ok {
		engines = slices.DeleteFunc(slices.Clone(engines), func(e string) bool { return !slices.Contains(only, e) })
		if len(engines) == 0 {
			return "", fmt.Errorf("no engine reads %s weights from %s://: copy them to the model store and register them as file:///…", format, src.Scheme)
		}
	}
	if asked == "" {
		// The simulator runs only when asked for: a model registered
		// without an engine is meant to answer for real.
		if engines[0] == "simulator" {
			return "", fmt.Errorf("no engine reads %s weights from %s", cmp.Or(format, "these"), src)
		}
		return engines[0], nil
	}
	if !slices.Contains(engines, asked) {
		what := format + " weights"
		if format == "" {
			what = "these weights"
		}
		return "", fmt.Errorf("engine %s cannot load %s from %s (use %s)", asked, what, src, strings.Join(engines, " or "))
	}
	return asked, nil
}

// tasksFor checks the tasks asked for against what engine serves; none
// asked for is text generation.
func tasksFor(asked []string, engine string) ([]string, error) {
	if len(asked) == 0 {
		asked = []string{taskText}
	}
	serves := engineTasks[engine]
	var out []string
	for _, t := range asked {
		if !slices.Contains(catalog.Tasks, t) {
			return nil, fmt.Errorf("unknown task %q: want %s", t, strings.Join(catalog.Tasks, ", "))
		}
		if !slices.Contains(serves, t) {
			return nil, fmt.Errorf("engine %s cannot serve %s (it serves %s)", engine, t, strings.Join(serves, ", "))
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

// defaultGPUs is how many GPUs an instance gets when its registrant says
// nothing: none for what runs well on CPUs (GGUF, Ollama and the
// simulator), one for the rest.
func defaultGPUs(format, engine string) int {
	if engine == "simulator" || format == catalog.FormatGGUF || format == catalog.FormatOllama {
		return 0
	}
	return 1
}

// runnable checks that the workers can hand src to engine: a Hugging Face
// revision or single file has no form the engines take yet, so a model
// that needs one is refused now rather than failing on every worker. The
// simulator reads no weights and runs anything.
func runnable(src catalog.Source, engine string) error {
	if engine == "simulator" {
		return nil
	}
	if _, err := src.EngineSource(); err != nil {
		return fmt.Errorf("%w (engine %s)", err, engine)
	}
	return nil
}
