// Package enginetest finds the real serving engines for tests that run
// them, and writes the tiny model they serve. An engine is looked for
// where `make engines` builds it (.cache/engines/bin at the repository
// root), then on PATH. A test that cannot find one fails, saying how to
// get it: a test that cannot run does not pass.
package enginetest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/tinygguf"
)

// BuildDir is where `make engines` puts the engines, from the repository
// root.
const BuildDir = ".cache/engines/bin"

// Ollama returns the path of the ollama program, failing t when there is
// none.
func Ollama(t testing.TB) string {
	t.Helper()
	path, err := Find("ollama")
	if err != nil {
		t.Fatalf("Ollama is required: %v. Build it with `make engines` at the repository root "+
			"(Go with cgo, a C++ compiler and the Debian packages nlohmann-json3-dev and libstb-dev), "+
			"or put an ollama program on PATH", err)
	}
	return path
}

// Find returns the path of an engine program: in BuildDir above the
// working directory, or else on PATH.
func Find(program string) (string, error) {
	if root, ok := repoRoot(); ok {
		path := filepath.Join(root, BuildDir, program)
		if st, err := os.Stat(path); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return path, nil
		}
	}
	path, err := exec.LookPath(program)
	if err != nil {
		return "", errors.New(program + " is neither in " + BuildDir + " nor on PATH")
	}
	return filepath.Abs(path)
}

// repoRoot is the nearest folder at or above the working directory with a
// go.work file.
func repoRoot() (string, bool) {
	dir, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// TinyModel writes the default tiny GGUF model (tinygguf.Model) and its
// LoRA adapter (tinygguf.Adapter) into a temporary folder of t's and
// returns their paths.
func TinyModel(t testing.TB) (model, adapter string) {
	t.Helper()
	dir := t.TempDir()
	model, adapter = filepath.Join(dir, "tiny.gguf"), filepath.Join(dir, "tiny-lora.gguf")
	m, err := tinygguf.Model(tinygguf.Options{})
	if err == nil {
		err = m.WriteFile(model)
	}
	a, err2 := tinygguf.Adapter(tinygguf.AdapterOptions{})
	if err2 == nil {
		err2 = a.WriteFile(adapter)
	}
	if err := errors.Join(err, err2); err != nil {
		t.Fatalf("write the tiny model: %v", err)
	}
	return model, adapter
}

// Native is Ollama's own account of a chat: what it answered and the
// tokens it counted, from its native API.
type Native struct {
	Content    string
	DoneReason string // "stop" or "length"
	Prompt     int    // prompt_eval_count
	Completion int    // eval_count
}

// OllamaChat sends a chat to Ollama's native API (/api/chat, not the
// OpenAI one) at base, the server's URL without /v1, and returns its
// answer and counts. options are Ollama's ("temperature", "num_predict",
// "stop", "seed", …): the same request in the OpenAI API sets
// "temperature" and "top_p" to 1 unless it says otherwise, so pass both.
func OllamaChat(t testing.TB, base, model string, messages []map[string]string, options map[string]any) Native {
	t.Helper()
	body, err := json.Marshal(map[string]any{"model": model, "messages": messages, "stream": false, "options": options})
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 2 * time.Minute}
	resp, err := client.Post(strings.TrimSuffix(base, "/")+"/api/chat", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("ollama /api/chat: %v", err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out struct {
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
		DoneReason      string `json:"done_reason"`
		PromptEvalCount int    `json:"prompt_eval_count"`
		EvalCount       int    `json:"eval_count"`
	}
	if err := json.Unmarshal(raw, &out); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("ollama /api/chat: %s: %v: %s", resp.Status, err, raw)
	}
	return Native{Content: out.Message.Content, DoneReason: out.DoneReason, Prompt: out.PromptEvalCount, Completion: out.EvalCount}
}
