package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/gguftest"
)

// TestCLIModels drives `modelport models` against a running all-in-one
// platform: register a GGUF file from the model store and see what its
// header says, the refusals on the way, list and show it, deploy and chat
// with it, find it invisible to another owner, see a model too big for
// the worker stay pending with the reason, and delete it once no service
// uses it.
func TestCLIModels(t *testing.T) {
	chAddr, chDB := chtest.New(t)
	p, err := startPlatform(context.Background(), testEnv(t, chAddr, chDB), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	if len(p.ModelDirs) != 1 || !strings.HasSuffix(p.ModelDirs[0], "/models") {
		t.Fatalf("model store %v, want the models folder in the data folder", p.ModelDirs)
	}
	store := p.ModelDirs[0]
	tiny := filepath.Join(store, "tiny", "tiny-F16.gguf")
	if err := os.MkdirAll(filepath.Dir(tiny), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := gguftest.Write(tiny, gguftest.Tiny()); err != nil {
		t.Fatal(err)
	}
	notes := filepath.Join(store, "notes.gguf")
	if err := os.WriteFile(notes, []byte("not weights at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	m := &cliRunner{t: t, bin: buildModelport(t), env: []string{
		"HOME=" + home, "XDG_CONFIG_HOME=", "MODELPORT_CONFIG=" + filepath.Join(home, "config.json"),
		"MODELPORT_URL=" + p.BaseURL, "MODELPORT_API_KEY=" + testAdminKey, "MODELPORT_NATS_URL=",
	}}

	out, stderr := m.ok("", "models", "add", "tiny", "--source", "file://"+tiny, "--display-name", "Tiny Llama (test)")
	for _, want := range []string{"Name:", "tiny", "Source:", "file://" + tiny, "Format:", "gguf", "Engine:", "ollama", "Tasks:", "text-generation",
		"GPUs:", "0", "Context length:", "2048 tokens", "Architecture:", "llama", "Parameters:", "164.2 K", "Quantization:", "F16", "Layers:", "2",
		"Estimated memory:", "on CPUs"} {
		if !strings.Contains(out, want) {
			t.Errorf("models add: no %q in\n%s", want, out)
		}
	}
	if !strings.Contains(stderr, "Registered model tiny") {
		t.Errorf("models add: stderr %q", stderr)
	}

	// Refusals say what is wrong and store nothing.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"tiny", "--source", "file://" + tiny}, "you already have a model named tiny"},
		{[]string{"notes", "--source", "file://" + notes}, "is not a GGUF file"},
		{[]string{"rel", "--source", "file://tiny/tiny-F16.gguf"}, "not an absolute path"},
		{[]string{"gone", "--source", "file://" + filepath.Join(store, "gone.gguf")}, "does not exist on the model store"},
		{[]string{"web", "--source", "https://example.com/m.gguf"}, `unknown source scheme "https"`},
		{[]string{"pic", "--source", "file://" + tiny, "--task", "image-generation"}, "cannot serve image-generation"},
		{[]string{"lora", "--adapter", "file://" + tiny}, "give --source URI, or --base MODEL"},
		{[]string{"lora", "--source", "hf://org/repo", "--adapter", "hf://org/lora"}, "a LoRA adapter needs the model it was trained on"},
	} {
		if _, stderr := m.fail("", append([]string{"models", "add"}, tc.args...)...); !strings.Contains(stderr, tc.want) {
			t.Errorf("models add %v: stderr %q, want %q", tc.args, stderr, tc.want)
		}
	}

	out, _ = m.ok("", "models", "ls")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !regexp.MustCompile(`^NAME +OWNER +ENGINE +FORMAT +TASKS +GPUS +CONTEXT +MEMORY +SOURCE$`).MatchString(lines[0]) {
		t.Errorf("models ls header: %q", lines[0])
	}
	if !regexp.MustCompile(`(?m)^tiny +[0-9a-f]{12} +ollama +gguf +text-generation +0 +2048 +[0-9.]+ MiB +file://`+regexp.QuoteMeta(tiny)+`$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^qwen2.5-7b-instruct +catalog +vllm `).MatchString(out) {
		t.Errorf("models ls:\n%s", out)
	}
	if strings.Contains(out, "notes") || strings.Contains(out, "gone") {
		t.Errorf("a refused model is listed:\n%s", out)
	}
	var list []apiModel
	m.okJSON(&list, "models", "ls", "--output", "json")
	var got apiModel
	m.okJSON(&got, "models", "get", "tiny", "--output", "json")
	if got.Name != "tiny" || got.DisplayName != "Tiny Llama (test)" || got.Inspection == nil || got.Inspection.Parameters != 164160 ||
		got.MemoryBytes != got.Inspection.MemoryBytes || len(list) < 2 {
		t.Errorf("models get --output json: %+v (%d listed)", got, len(list))
	}

	// Deploy it and chat: no engine is enabled here, so the simulator
	// answers, and says so.
	if out, _ := m.ok("", "deploy", "tiny-chat", "--model", "tiny", "--wait", "--timeout", "1m"); !strings.Contains(out, "running") {
		t.Errorf("deploy the registered model:\n%s", out)
	}
	if out, _ := m.ok("", "chat", "tiny-chat", "Say this is a test!", "--no-stream"); strings.TrimSpace(out) == "" {
		t.Error("chat with the registered model: no answer")
	}
	var svc struct {
		AccessName string `json:"access_name"`
		Model      struct {
			Name, Owner, Source string
		} `json:"model"`
	}
	m.okJSON(&svc, "get", "tiny-chat", "--output", "json")
	if svc.Model.Name != "tiny" || svc.Model.Source != "file://"+tiny || svc.Model.Owner != got.Owner {
		t.Errorf("the service's model: %+v", svc.Model)
	}
	if _, stderr := m.fail("", "models", "rm", "tiny"); !strings.Contains(stderr, "in use by service "+svc.AccessName) {
		t.Errorf("models rm of a model in use: %q", stderr)
	}

	// Another owner neither sees nor deploys it.
	var bob struct {
		Key struct {
			Secret string `json:"key"`
		} `json:"api_key"`
	}
	if s := call(t, "POST", p.BaseURL+"/api/v1/owners", testAdminKey, map[string]any{"kind": "user", "name": "bob"}, &bob); s != 201 {
		t.Fatalf("create bob: %d", s)
	}
	out, _ = m.ok("", "models", "ls", "--key", bob.Key.Secret)
	if strings.Contains(out, "tiny") {
		t.Errorf("bob's models ls shows alice's model:\n%s", out)
	}
	if _, stderr := m.fail("", "deploy", "stolen", "--model", "tiny", "--key", bob.Key.Secret); !strings.Contains(stderr, `unknown base model "tiny"`) {
		t.Errorf("bob deploys it: %q", stderr)
	}
	if _, stderr := m.fail("", "models", "get", "tiny", "--key", bob.Key.Secret); !strings.Contains(stderr, "not found") {
		t.Errorf("bob reads it: %q", stderr)
	}

	// A model that needs more memory than the worker has stays pending,
	// and the service says why.
	m.ok("", "models", "add", "huge", "--source", "file://"+tiny, "--memory-gib", "16384")
	m.ok("", "deploy", "huge-chat", "--model", "huge")
	eventually(t, 30*time.Second, "the huge service says why it is pending", func() error {
		var s struct {
			Status       string `json:"status"`
			StatusReason string `json:"status_reason"`
		}
		m.okJSON(&s, "get", "huge-chat", "--output", "json")
		if s.Status != "pending" || !strings.Contains(s.StatusReason, "no worker has the memory: an instance needs 16384.0 GiB of memory (local: ") {
			return fmt.Errorf("status %s, reason %q", s.Status, s.StatusReason)
		}
		return nil
	})

	// Deleted once nothing uses it.
	m.ok("tiny-chat\n", "delete", "tiny-chat")
	m.ok("huge-chat\n", "delete", "huge-chat")
	eventually(t, 30*time.Second, "tiny deleted", func() error {
		r := m.run("", "models", "rm", "tiny")
		if r.code != 0 {
			return fmt.Errorf("models rm: %s", r.stderr)
		}
		if !strings.Contains(r.stdout, "Deleted model tiny.") {
			return fmt.Errorf("models rm said %q", r.stdout)
		}
		return nil
	})
	if _, stderr := m.fail("", "models", "get", "tiny"); !strings.Contains(stderr, "not found") {
		t.Errorf("models get after rm: %q", stderr)
	}
	var rm struct {
		Name    string `json:"name"`
		Deleted bool   `json:"deleted"`
	}
	m.okJSON(&rm, "models", "rm", "huge", "--output", "json")
	if rm.Name != "huge" || !rm.Deleted {
		t.Errorf("models rm --output json: %+v", rm)
	}
}
