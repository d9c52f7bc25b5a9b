package modelstore_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/gguftest"
	"github.com/modelport/modelport/services/deployer/internal/modelstore"
)

// store returns an Inspector on a fresh model store folder.
func store(t *testing.T) (*modelstore.Inspector, string) {
	t.Helper()
	dir := t.TempDir()
	in, err := modelstore.New([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	return in, dir
}

func writeGGUF(t *testing.T, path string, m gguftest.Model) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := gguftest.Write(path, m); err != nil {
		t.Fatal(err)
	}
}

// upTo8K picks the trained context, at most 8192, as the registry does.
func upTo8K(trained int) int { return min(trained, 8192) }

func TestInspectGGUF(t *testing.T) {
	in, dir := store(t)
	tiny := filepath.Join(dir, "tiny.gguf")
	writeGGUF(t, tiny, gguftest.Tiny())
	large := filepath.Join(dir, "llama", "large-Q4_K_M.gguf")
	writeGGUF(t, large, gguftest.Large())

	got, err := in.Inspect(context.Background(), tiny, upTo8K)
	if err != nil {
		t.Fatal(err)
	}
	// Tiny: 2 layers of 64 wide, F16; 64x256 embeddings and output.
	if got.Format != "gguf" || got.Architecture != "llama" || got.ModelName != "Tiny Llama" || got.Quantization != "F16" ||
		got.ContextLength != 2048 || got.EstimatedContext != 2048 || got.Layers != 2 {
		t.Errorf("tiny: %+v", got)
	}
	wantParams := int64(2*64*256 + 64 + 2*(64+64*64*4+64+3*64*256))
	if got.Parameters != wantParams || got.TensorBytes < 2*wantParams || got.FileBytes <= got.TensorBytes {
		t.Errorf("tiny: parameters %d (want %d), tensor bytes %d, file bytes %d", got.Parameters, wantParams, got.TensorBytes, got.FileBytes)
	}
	if got.MemoryBytes < got.TensorBytes || got.GPUMemoryBytes < got.TensorBytes {
		t.Errorf("tiny: memory %d and GPU memory %d, less than its weights %d", got.MemoryBytes, got.GPUMemoryBytes, got.TensorBytes)
	}

	big, err := in.Inspect(context.Background(), large, upTo8K)
	if err != nil {
		t.Fatal(err)
	}
	if big.Quantization != "Q4_K_M" || big.ContextLength != 131072 || big.EstimatedContext != 8192 || big.Layers != 32 {
		t.Errorf("large: %+v", big)
	}
	if big.Parameters < 7_900_000_000 || big.Parameters > 8_100_000_000 {
		t.Errorf("large: %d parameters, want about 8 billion", big.Parameters)
	}
	// Weights of about 4.5 GB plus an 8K-token KV cache (32 layers x 8
	// heads x 128 x 2 x 2 bytes x 8192 = 1 GiB) and compute buffers.
	if big.MemoryBytes < big.TensorBytes+1<<30 || big.MemoryBytes > big.TensorBytes+3<<30 {
		t.Errorf("large: memory estimate %d for %d bytes of weights", big.MemoryBytes, big.TensorBytes)
	}
	// A longer context costs more memory.
	long, err := in.Inspect(context.Background(), large, func(int) int { return 32768 })
	if err != nil {
		t.Fatal(err)
	}
	if long.EstimatedContext != 32768 || long.MemoryBytes-big.MemoryBytes < 3<<30 {
		t.Errorf("32K context: %d bytes, 8K context: %d bytes; want about 3 GiB more", long.MemoryBytes, big.MemoryBytes)
	}
}

func TestInspectRejects(t *testing.T) {
	in, dir := store(t)
	outside := t.TempDir()
	header, _ := gguftest.Tiny().Header()
	files := map[string]func(p string) error{
		"tiny.gguf":    func(p string) error { return gguftest.Write(p, gguftest.Tiny()) },
		"adapter.gguf": func(p string) error { return gguftest.Write(p, gguftest.TinyAdapter()) },
		"notes.txt.gguf": func(p string) error {
			return os.WriteFile(p, []byte("these are my notes, not weights"), 0o644)
		},
		"empty.gguf":     func(p string) error { return os.WriteFile(p, nil, 0o644) },
		"cut-magic.gguf": func(p string) error { return os.WriteFile(p, []byte("GG"), 0o644) },
		// Cut in the tensor count, in the middle of the metadata, and in
		// the tensor infos.
		"cut-counts.gguf":  func(p string) error { return os.WriteFile(p, header[:12], 0o644) },
		"cut-meta.gguf":    func(p string) error { return os.WriteFile(p, header[:200], 0o644) },
		"cut-tensors.gguf": func(p string) error { return os.WriteFile(p, header[:len(header)-100], 0o644) },
		// A whole header, but the weights are not all there.
		"cut-data.gguf": func(p string) error { return os.WriteFile(p, append(header, make([]byte, 1000)...), 0o644) },
		"folder/x":      func(p string) error { return os.WriteFile(p, []byte("x"), 0o644) },
	}
	for name, write := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := write(p); err != nil {
			t.Fatal(err)
		}
	}
	secret := filepath.Join(outside, "secret.gguf")
	writeGGUF(t, secret, gguftest.Tiny())
	if err := os.Symlink(secret, filepath.Join(dir, "link.gguf")); err != nil {
		t.Fatal(err)
	}

	tests := []struct{ path, want string }{
		{"notes.txt.gguf", `is not a GGUF file: it starts with "thes"`},
		{"empty.gguf", "shorter than the 4-byte magic"},
		{"cut-magic.gguf", "shorter than the 4-byte magic"},
		{"cut-counts.gguf", "header ends early"},
		{"cut-meta.gguf", "is not"},
		{"cut-tensors.gguf", "is not"},
		{"cut-data.gguf", "tensor data needs"},
		{"adapter.gguf", "is not a model but a LoRA adapter"},
		{"missing.gguf", "does not exist on the model store"},
		{"folder", "without config.json"},
		{"link.gguf", "links outside the model store"},
		{secret, "is outside the model store"},
		{filepath.Join(dir, "..", filepath.Base(outside), "secret.gguf"), "is outside the model store"},
		{"/etc/passwd", "is outside the model store"},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			p := tc.path
			if !filepath.IsAbs(p) {
				p = filepath.Join(dir, p)
			}
			_, err := in.Inspect(context.Background(), p, upTo8K)
			if errs.KindOf(err) != errs.Invalid || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Inspect(%s) = %v (%s), want an invalid error containing %q", tc.path, err, errs.KindOf(err), tc.want)
			}
		})
	}
	if _, err := in.InspectAdapter(context.Background(), filepath.Join(dir, "tiny.gguf")); err == nil || !strings.Contains(err.Error(), "is not a LoRA adapter") {
		t.Errorf("a model as an adapter: %v", err)
	}
	a, err := in.InspectAdapter(context.Background(), filepath.Join(dir, "adapter.gguf"))
	if err != nil || a.Format != "gguf" || a.TensorBytes != 2*2*(64*8+8*64)*4 {
		t.Errorf("adapter: %+v, %v", a, err)
	}
	none, _ := modelstore.New(nil)
	if _, err := none.Inspect(context.Background(), filepath.Join(dir, "tiny.gguf"), upTo8K); err == nil || !strings.Contains(err.Error(), "no model store") {
		t.Errorf("without a model store: %v", err)
	}
	if _, err := modelstore.New([]string{"models"}); err == nil {
		t.Error("a relative model store folder was accepted")
	}
}

// writeSafetensors writes a safetensors file with the given tensors (name:
// shape) in dtype, and its data as zeros, or cut short by cut bytes.
func writeSafetensors(t *testing.T, path, dtype string, tensors map[string][]int64, cut int) {
	t.Helper()
	size := map[string]int64{"BF16": 2, "F16": 2, "F32": 4}[dtype]
	header := map[string]any{"__metadata__": map[string]string{"format": "pt"}}
	var off int64
	for name, shape := range tensors {
		n := size
		for _, d := range shape {
			n *= d
		}
		header[name] = map[string]any{"dtype": dtype, "shape": shape, "data_offsets": []int64{off, off + n}}
		off += n
	}
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	b = append(append(b, h...), make([]byte, off-int64(cut))...)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestInspectFolder(t *testing.T) {
	in, dir := store(t)
	model := filepath.Join(dir, "small-llama")
	if err := os.MkdirAll(model, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := `{"architectures":["LlamaForCausalLM"],"model_type":"llama","max_position_embeddings":4096,
		"num_hidden_layers":2,"hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,"torch_dtype":"bfloat16"}`
	if err := os.WriteFile(filepath.Join(model, "config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	writeSafetensors(t, filepath.Join(model, "model-00001-of-00002.safetensors"), "BF16", map[string][]int64{"embed": {256, 64}, "l0": {64, 64}}, 0)
	writeSafetensors(t, filepath.Join(model, "model-00002-of-00002.safetensors"), "BF16", map[string][]int64{"l1": {64, 64}, "norm": {64}}, 0)

	got, err := in.Inspect(context.Background(), model, upTo8K)
	if err != nil {
		t.Fatal(err)
	}
	params := int64(256*64 + 2*64*64 + 64)
	kv := int64(2 * 2 * 2 * 16 * 4096 * 2) // K and V, layers, KV heads, head dim, context, 2 bytes
	if got.Format != "safetensors" || got.Architecture != "LlamaForCausalLM" || got.Quantization != "BF16" ||
		got.ContextLength != 4096 || got.Layers != 2 || got.Parameters != params || got.TensorBytes != 2*params {
		t.Errorf("folder: %+v", got)
	}
	if want := 2*params + 2*params/10 + kv + 512<<20; got.GPUMemoryBytes != want || got.MemoryBytes != want {
		t.Errorf("estimate: %d and %d bytes, want %d", got.MemoryBytes, got.GPUMemoryBytes, want)
	}

	// Broken folders.
	cut := filepath.Join(dir, "cut")
	noWeights := filepath.Join(dir, "no-weights")
	badConfig := filepath.Join(dir, "bad-config")
	for _, d := range []string{cut, noWeights, badConfig} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		conf := cfg
		if d == badConfig {
			conf = `{"architectures":`
		}
		if err := os.WriteFile(filepath.Join(d, "config.json"), []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeSafetensors(t, filepath.Join(cut, "model.safetensors"), "F16", map[string][]int64{"w": {64, 64}}, 10)
	writeSafetensors(t, filepath.Join(badConfig, "model.safetensors"), "F16", map[string][]int64{"w": {64, 64}}, 0)
	for path, want := range map[string]string{
		cut:       "its tensors need",
		noWeights: "has no *.safetensors files",
		badConfig: "config.json is not valid JSON",
	} {
		if _, err := in.Inspect(context.Background(), path, upTo8K); errs.KindOf(err) != errs.Invalid || !strings.Contains(err.Error(), want) {
			t.Errorf("Inspect(%s) = %v, want an invalid error containing %q", filepath.Base(path), err, want)
		}
	}

	// A PEFT adapter folder.
	adapter := filepath.Join(dir, "lora")
	if err := os.MkdirAll(adapter, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(adapter, "adapter_config.json"), []byte(`{"peft_type":"LORA","base_model_name_or_path":"small-llama"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	writeSafetensors(t, filepath.Join(adapter, "adapter_model.safetensors"), "F32", map[string][]int64{"a": {64, 8}, "b": {8, 64}}, 0)
	a, err := in.InspectAdapter(context.Background(), adapter)
	if err != nil || a.TensorBytes != 2*64*8*4 || a.ModelName != "small-llama" {
		t.Errorf("adapter folder: %+v, %v", a, err)
	}
	if _, err := in.InspectAdapter(context.Background(), model); err == nil || !strings.Contains(err.Error(), "without adapter_config.json") {
		t.Errorf("a model folder as an adapter: %v", err)
	}
}
