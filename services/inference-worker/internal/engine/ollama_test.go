package engine_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/enginetest"
	"github.com/modelport/modelport/services/inference-worker/internal/engine"
	"github.com/modelport/modelport/services/inference-worker/internal/supervisor"
)

// realEngine supervises a real engine: loading a model takes a moment.
var realEngine = supervisor.Policy{
	StartTimeout: 2 * time.Minute,
	Backoff:      200 * time.Millisecond,
	MaxBackoff:   time.Second,
	MaxCrashes:   3,
	CrashWindow:  time.Minute,
	StopGrace:    10 * time.Second,
	PollInterval: 100 * time.Millisecond,
}

// startOllama starts a real Ollama instance serving spec, in a home of its
// own, and waits until it is ready.
func startOllama(t *testing.T, spec engine.Spec) engine.Instance {
	t.Helper()
	bin := enginetest.Ollama(t)
	home := t.TempDir()
	p := &engine.Process{
		Adapter: engine.Ollama{}, Ports: engine.Ports{Host: "127.0.0.1"}, SearchPath: filepath.Dir(bin),
		Environ: []string{"HOME=" + home, "PATH=/usr/bin:/bin"}, Policy: realEngine,
		CPUThreads: 1, // the tiny model needs no more, and the test machine may be busy
	}
	inst := start(t, p, spec)
	deadline := time.After(realEngine.StartTimeout)
	for {
		select {
		case ev, open := <-inst.Events():
			switch {
			case !open:
				t.Fatal("events closed before the instance was ready")
			case ev.State == engine.Ready:
				return inst
			case ev.State == engine.Failed:
				t.Fatalf("ollama failed: %s\n%s", ev.Failure.Reason, ev.Failure.LogTail)
			}
		case <-deadline:
			t.Fatal("ollama not ready in time")
		}
	}
}

// chatRequest is an OpenAI chat completion request.
type chatRequest struct {
	Model         string              `json:"model"`
	Messages      []map[string]string `json:"messages"`
	MaxTokens     int                 `json:"max_tokens,omitempty"`
	Temperature   *float64            `json:"temperature,omitempty"`
	Seed          *int                `json:"seed,omitempty"`
	Stop          []string            `json:"stop,omitempty"`
	Stream        bool                `json:"stream,omitempty"`
	StreamOptions map[string]bool     `json:"stream_options,omitempty"`
}

// answer is what a chat completion, whole or streamed, came to.
type answer struct {
	Model      string
	Content    string
	Finish     string
	Prompt     int
	Completion int
	Chunks     int // content chunks of a stream
}

// native returns the same request in Ollama's options.
func (r chatRequest) native() map[string]any {
	o := map[string]any{"temperature": 1.0, "top_p": 1.0}
	if r.Temperature != nil {
		o["temperature"] = *r.Temperature
	}
	if r.MaxTokens > 0 {
		o["num_predict"] = r.MaxTokens
	}
	if r.Seed != nil {
		o["seed"] = *r.Seed
	}
	if len(r.Stop) > 0 {
		o["stop"] = r.Stop
	}
	return o
}

func greedy() *float64 { zero := 0.0; return &zero }

func user(s string) []map[string]string { return []map[string]string{{"role": "user", "content": s}} }

// complete sends req to the OpenAI API at v1 and reads the answer, whole
// or streamed.
func complete(t *testing.T, v1 string, req chatRequest) answer {
	t.Helper()
	body, _ := json.Marshal(req)
	client := &http.Client{Timeout: 2 * time.Minute}
	resp, err := client.Post(v1+"/chat/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("chat completion: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("chat completion: %s: %s", resp.Status, b)
	}
	type usage struct {
		Prompt     int `json:"prompt_tokens"`
		Completion int `json:"completion_tokens"`
	}
	var a answer
	if !req.Stream {
		var cc struct {
			Model   string `json:"model"`
			Choices []struct {
				Message      struct{ Content string }
				FinishReason string `json:"finish_reason"`
			}
			Usage usage
		}
		if err := json.NewDecoder(resp.Body).Decode(&cc); err != nil || len(cc.Choices) != 1 {
			t.Fatalf("chat completion: %v, %d choices", err, len(cc.Choices))
		}
		return answer{Model: cc.Model, Content: cc.Choices[0].Message.Content, Finish: cc.Choices[0].FinishReason,
			Prompt: cc.Usage.Prompt, Completion: cc.Usage.Completion}
	}
	sc := bufio.NewScanner(resp.Body)
	done := false
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var chunk struct {
			Model   string `json:"model"`
			Choices []struct {
				Delta        struct{ Content string }
				FinishReason *string `json:"finish_reason"`
			}
			Usage *usage
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			t.Fatalf("bad chunk %q: %v", data, err)
		}
		a.Model = chunk.Model
		for _, c := range chunk.Choices {
			if c.Delta.Content != "" {
				a.Content += c.Delta.Content
				a.Chunks++
			}
			if c.FinishReason != nil {
				a.Finish = *c.FinishReason
			}
		}
		if chunk.Usage != nil {
			a.Prompt, a.Completion = chunk.Usage.Prompt, chunk.Usage.Completion
		}
	}
	if err := sc.Err(); err != nil || !done {
		t.Fatalf("stream ended without [DONE]: %v", err)
	}
	return a
}

// sameAsOllama checks that an answer's text, end and usage are what
// Ollama's native API says for the same request.
func sameAsOllama(t *testing.T, base string, req chatRequest, got answer) {
	t.Helper()
	n := enginetest.OllamaChat(t, base, req.Model, req.Messages, req.native())
	if got.Prompt != n.Prompt || got.Completion != n.Completion {
		t.Errorf("usage %d prompt + %d completion tokens; Ollama's own counts are %d + %d", got.Prompt, got.Completion, n.Prompt, n.Completion)
	}
	if got.Content != n.Content || got.Finish != n.DoneReason {
		t.Errorf("answer %q (%s); Ollama's own is %q (%s)", got.Content, got.Finish, n.Content, n.DoneReason)
	}
}

// TestOllamaServesTheTinyModel starts a real Ollama from a spec with a
// local GGUF file, as the worker does, and checks the OpenAI API it
// serves against Ollama's own native API: a whole answer, a stream with
// usage, a stop sequence, max_tokens, two conversations at once, and an
// answer that ends on its own.
func TestOllamaServesTheTinyModel(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real engine")
	}
	model, _ := enginetest.TinyModel(t)
	const served = "u-a11ce0000001/tiny"
	inst := startOllama(t, engine.Spec{InstanceID: "i-1", ServedName: served, BaseModel: "tiny", Task: "text-generation",
		Engine: "ollama", Source: "file://" + model, ContextLength: 1024})
	if got := inst.Engine(); got != "ollama" {
		t.Errorf("engine %q", got)
	}
	v1 := inst.Endpoint()
	base := strings.TrimSuffix(v1, "/v1")

	hello := chatRequest{Model: served, Messages: user("Say this is a test!"), MaxTokens: 12, Temperature: greedy()}
	var whole answer
	t.Run("whole answer", func(t *testing.T) {
		whole = complete(t, v1, hello)
		if whole.Model != served || whole.Finish != "length" || whole.Completion != 12 || whole.Prompt < 10 || whole.Content == "" {
			t.Errorf("answer %+v: want the served name, 12 tokens cut by max_tokens", whole)
		}
		sameAsOllama(t, base, hello, whole)
	})

	t.Run("stream with usage", func(t *testing.T) {
		req := hello
		req.Stream, req.StreamOptions = true, map[string]bool{"include_usage": true}
		got := complete(t, v1, req)
		if got.Content != whole.Content || got.Finish != "length" || got.Prompt != whole.Prompt || got.Completion != whole.Completion || got.Chunks < 2 {
			t.Errorf("stream %+v; the same request whole: %+v", got, whole)
		}
		sameAsOllama(t, base, req, got)
	})

	t.Run("stop", func(t *testing.T) {
		// Greedy decoding repeats itself: stop at the first text that the
		// answer holds after its start.
		if len(whole.Content) < 6 {
			t.Fatalf("the whole answer %q is too short to cut", whole.Content)
		}
		stop := whole.Content[3:5]
		req := hello
		req.Stop = []string{stop}
		got := complete(t, v1, req)
		want := whole.Content[:strings.Index(whole.Content, stop)]
		if got.Content != want || got.Finish != "stop" || got.Completion >= whole.Completion {
			t.Errorf("stop %q: answer %+v, want %q ended by the stop sequence", stop, got, want)
		}
		sameAsOllama(t, base, req, got)
	})

	t.Run("max_tokens", func(t *testing.T) {
		req := hello
		req.MaxTokens = 3
		got := complete(t, v1, req)
		if got.Completion != 3 || got.Finish != "length" || !strings.HasPrefix(whole.Content, got.Content) {
			t.Errorf("max_tokens 3: %+v (whole answer %q)", got, whole.Content)
		}
		sameAsOllama(t, base, req, got)
	})

	t.Run("two conversations at once", func(t *testing.T) {
		reqs := []chatRequest{
			{Model: served, Messages: user("Tell me about the sea."), MaxTokens: 10, Temperature: greedy()},
			{Model: served, Messages: []map[string]string{
				{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
				{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And now?"}},
				MaxTokens: 8, Temperature: greedy(), Stream: true, StreamOptions: map[string]bool{"include_usage": true}},
		}
		alone := make([]answer, len(reqs))
		for i, r := range reqs {
			alone[i] = complete(t, v1, r)
		}
		together := make([]answer, len(reqs))
		var wg sync.WaitGroup
		for i, r := range reqs {
			wg.Go(func() { together[i] = complete(t, v1, r) })
		}
		wg.Wait()
		for i := range reqs {
			a, b := alone[i], together[i]
			b.Chunks, a.Chunks = 0, 0
			if a != b {
				t.Errorf("conversation %d: together %+v, alone %+v", i, b, a)
			}
			sameAsOllama(t, base, reqs[i], together[i])
		}
		if together[0].Prompt == together[1].Prompt {
			t.Errorf("two different conversations counted the same prompt tokens: %d", together[0].Prompt)
		}
	})

	t.Run("a sampled answer ends by itself", func(t *testing.T) {
		seed := 42
		req := chatRequest{Model: served, Messages: user("Tell me a story."), Seed: &seed}
		got := complete(t, v1, req)
		if got.Finish != "stop" || got.Completion < 1 || got.Completion > 1000 {
			t.Errorf("answer %+v: want one that ends with the model's end token", got)
		}
		sameAsOllama(t, base, req, got)
	})
}

// TestOllamaServesALoRA serves the tiny model with its LoRA adapter: the
// adapter is uploaded and created into the model, and changes what it
// says.
func TestOllamaServesALoRA(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real engine")
	}
	model, adapter := enginetest.TinyModel(t)
	const served = "u-a11ce0000001/tuned"
	spec := engine.Spec{InstanceID: "i-1", ServedName: served, BaseModel: "tiny", Engine: "ollama", Source: model}
	base := startOllama(t, spec)
	spec.InstanceID, spec.Adapter = "i-2", engine.LoRA{Name: "tuned", Path: adapter}
	tuned := startOllama(t, spec)

	req := chatRequest{Model: served, Messages: user("Say this is a test!"), MaxTokens: 12, Temperature: greedy()}
	plain, withLoRA := complete(t, base.Endpoint(), req), complete(t, tuned.Endpoint(), req)
	if plain.Content == withLoRA.Content {
		t.Errorf("the adapter changed nothing: both answered %q", plain.Content)
	}
	if withLoRA.Completion != 12 || withLoRA.Prompt != plain.Prompt {
		t.Errorf("with the adapter %+v, without %+v", withLoRA, plain)
	}
	sameAsOllama(t, strings.TrimSuffix(tuned.Endpoint(), "/v1"), req, withLoRA)
}

// TestOllamaRejectsWhatIsNotAModel: a source file that is not a GGUF model
// fails the instance with Ollama's reason, rather than leaving it
// starting.
func TestOllamaRejectsWhatIsNotAModel(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real engine")
	}
	bad := filepath.Join(t.TempDir(), "notes.gguf")
	if err := os.WriteFile(bad, []byte("these are notes, not weights"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &engine.Process{
		Adapter: engine.Ollama{}, Ports: engine.Ports{Host: "127.0.0.1"}, SearchPath: filepath.Dir(enginetest.Ollama(t)),
		Environ: []string{"HOME=" + t.TempDir(), "PATH=/usr/bin:/bin"}, Policy: realEngine,
	}
	inst := start(t, p, engine.Spec{InstanceID: "i-1", ServedName: "u-a11ce0000001/notes", Source: bad})
	for ev := range inst.Events() {
		if ev.State == engine.Ready {
			t.Fatal("an instance of a file that is not a model became ready")
		}
		if ev.State == engine.Failed {
			if !strings.Contains(ev.Failure.Reason, "/api/create") || !strings.Contains(ev.Failure.Reason, "400") {
				t.Errorf("failure %q, want Ollama's refusal of the create request", ev.Failure.Reason)
			}
			return
		}
	}
	t.Fatal("events closed without a failure")
}
