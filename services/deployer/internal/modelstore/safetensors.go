package modelstore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/deployer/internal/models"
)

// Bounds on what a folder's JSON may make the deployer read.
const (
	maxConfig       = 1 << 20  // config.json, adapter_config.json
	maxHeader       = 64 << 20 // one safetensors header
	maxShards       = 1024
	overheadBytes   = 512 << 20 // an engine's own buffers, beside weights and KV cache
	overheadPercent = 10        // of the weights: activations and fragmentation
)

// hfConfig is the part of a Hugging Face config.json the inspection reads.
// Multimodal models nest the language model's settings in text_config.
type hfConfig struct {
	Architectures      []string  `json:"architectures"`
	ModelType          string    `json:"model_type"`
	MaxPositions       int       `json:"max_position_embeddings"`
	Layers             int       `json:"num_hidden_layers"`
	Hidden             int       `json:"hidden_size"`
	Heads              int       `json:"num_attention_heads"`
	KVHeads            int       `json:"num_key_value_heads"`
	HeadDim            int       `json:"head_dim"`
	TorchDtype         string    `json:"torch_dtype"`
	TextConfig         *hfConfig `json:"text_config"`
	QuantizationConfig *struct {
		QuantMethod string `json:"quant_method"`
	} `json:"quantization_config"`
}

// inspectFolder reads a Hugging Face-style folder: config.json for the
// architecture and shape, the safetensors headers for the weights. Its
// memory estimate is the weights, a KV cache in 16 bits for one sequence
// of the context length, and a margin for the engine's own buffers.
func inspectFolder(ctx context.Context, dir string, contextLength func(int) int) (models.Inspection, error) {
	var cfg hfConfig
	if err := readJSON(filepath.Join(dir, "config.json"), &cfg); err != nil {
		return models.Inspection{}, err
	}
	insp, err := readSafetensors(ctx, dir, "*.safetensors")
	if err != nil {
		return models.Inspection{}, err
	}
	if len(cfg.Architectures) > 0 {
		insp.Architecture = cfg.Architectures[0]
	} else {
		insp.Architecture = cfg.ModelType
	}
	text := cfg
	if cfg.TextConfig != nil {
		text = *cfg.TextConfig
		text.MaxPositions = max(text.MaxPositions, cfg.MaxPositions)
	}
	insp.ContextLength = text.MaxPositions
	insp.Layers = text.Layers
	if q := cfg.QuantizationConfig; q != nil && q.QuantMethod != "" {
		insp.Quantization = strings.ToUpper(q.QuantMethod)
	} else if cfg.TorchDtype != "" {
		insp.Quantization = dtypeName(cfg.TorchDtype)
	}
	insp.EstimatedContext = contextLength(insp.ContextLength)
	kvHeads := text.KVHeads
	if kvHeads == 0 {
		kvHeads = text.Heads
	}
	headDim := text.HeadDim
	if headDim == 0 && text.Heads > 0 {
		headDim = text.Hidden / text.Heads
	}
	kv := int64(2) * int64(text.Layers) * int64(kvHeads) * int64(headDim) * int64(insp.EstimatedContext) * 2
	insp.GPUMemoryBytes = insp.TensorBytes + insp.TensorBytes*overheadPercent/100 + kv + overheadBytes
	insp.MemoryBytes = insp.GPUMemoryBytes
	return insp, nil
}

// inspectAdapterFolder reads a PEFT LoRA adapter folder:
// adapter_config.json and its safetensors.
func inspectAdapterFolder(ctx context.Context, dir string) (models.Inspection, error) {
	var cfg struct {
		PEFTType string `json:"peft_type"`
		Base     string `json:"base_model_name_or_path"`
	}
	if err := readJSON(filepath.Join(dir, "adapter_config.json"), &cfg); err != nil {
		return models.Inspection{}, err
	}
	if cfg.PEFTType != "" && !strings.EqualFold(cfg.PEFTType, "LORA") {
		return models.Inspection{}, errs.E(errs.Invalid, "%s is a %s adapter, not a LoRA one", dir, cfg.PEFTType)
	}
	insp, err := readSafetensors(ctx, dir, "adapter_model*.safetensors")
	if err != nil {
		return models.Inspection{}, err
	}
	insp.Architecture = "lora"
	insp.ModelName = cfg.Base
	return insp, nil
}

// readJSON decodes a small JSON file; a missing or broken one is
// errs.Invalid naming it.
func readJSON(path string, v any) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return errs.E(errs.Invalid, "%s is a folder without %s: a model folder holds config.json and safetensors, an adapter folder adapter_config.json", filepath.Dir(path), filepath.Base(path))
	}
	if err != nil {
		return errs.E(errs.Invalid, "%s cannot be read: %v", path, unwrapPath(err))
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfig+1))
	if err != nil {
		return errs.E(errs.Invalid, "%s cannot be read: %v", path, err)
	}
	if len(b) > maxConfig {
		return errs.E(errs.Invalid, "%s is larger than %d bytes", path, maxConfig)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return errs.E(errs.Invalid, "%s is not valid JSON: %v", path, err)
	}
	return nil
}

// safetensorsTensor is one entry of a safetensors header.
type safetensorsTensor struct {
	Dtype   string  `json:"dtype"`
	Shape   []int64 `json:"shape"`
	Offsets []int64 `json:"data_offsets"`
}

// readSafetensors reads the headers of the files matching pattern in dir:
// the weights' count and size, checked against each file's length.
func readSafetensors(ctx context.Context, dir, pattern string) (models.Inspection, error) {
	files, err := filepath.Glob(filepath.Join(dir, pattern))
	if err != nil {
		return models.Inspection{}, errs.E(errs.Invalid, "%s: %v", dir, err)
	}
	slices.Sort(files)
	switch {
	case len(files) == 0:
		return models.Inspection{}, errs.E(errs.Invalid, "%s has no %s files", dir, pattern)
	case len(files) > maxShards:
		return models.Inspection{}, errs.E(errs.Invalid, "%s has more than %d safetensors files", dir, maxShards)
	}
	insp := models.Inspection{Format: catalog.FormatSafetensors}
	dtypes := map[string]int64{}
	for _, name := range files {
		if err := ctx.Err(); err != nil {
			return models.Inspection{}, err
		}
		if err := readSafetensorsFile(name, &insp, dtypes); err != nil {
			return models.Inspection{}, err
		}
	}
	var most int64
	for d, n := range dtypes {
		if n > most || n == most && d < insp.Quantization {
			insp.Quantization, most = dtypeName(d), n
		}
	}
	return insp, nil
}

func readSafetensorsFile(name string, insp *models.Inspection, dtypes map[string]int64) error {
	f, err := os.Open(name)
	if err != nil {
		return errs.E(errs.Invalid, "%s cannot be read: %v", name, unwrapPath(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return errs.E(errs.Invalid, "%s cannot be read: %v", name, err)
	}
	var n uint64
	if err := binary.Read(f, binary.LittleEndian, &n); err != nil {
		return errs.E(errs.Invalid, "%s is not a safetensors file: it is shorter than its header's length", name)
	}
	if n < 2 || n > maxHeader || int64(n)+8 > fi.Size() {
		return errs.E(errs.Invalid, "%s is not a whole safetensors file: its header claims %d bytes of %d", name, n, fi.Size())
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(f, b); err != nil {
		return errs.E(errs.Invalid, "%s is not a whole safetensors file: %v", name, err)
	}
	var header map[string]json.RawMessage
	if err := json.Unmarshal(b, &header); err != nil {
		return errs.E(errs.Invalid, "%s is not a safetensors file: its header is not JSON", name)
	}
	var end int64
	for key, raw := range header {
		if key == "__metadata__" {
			continue
		}
		var t safetensorsTensor
		if err := json.Unmarshal(raw, &t); err != nil || len(t.Offsets) != 2 || t.Offsets[0] < 0 || t.Offsets[1] < t.Offsets[0] {
			return errs.E(errs.Invalid, "%s: tensor %q has a broken entry", name, key)
		}
		elems := int64(1)
		for _, d := range t.Shape {
			if d < 0 || d > 1<<40 {
				return errs.E(errs.Invalid, "%s: tensor %q has a broken shape", name, key)
			}
			elems *= d
		}
		insp.Parameters += elems
		insp.TensorBytes += t.Offsets[1] - t.Offsets[0]
		dtypes[t.Dtype] += elems
		end = max(end, t.Offsets[1])
	}
	if 8+int64(n)+end > fi.Size() {
		return errs.E(errs.Invalid, "%s is not a whole safetensors file: it has %d bytes, its tensors need %d (a copy cut short?)", name, fi.Size(), 8+int64(n)+end)
	}
	insp.FileBytes += fi.Size()
	return nil
}

// dtypeName spells a data type as quantizations are spelled: BF16, F16, F32.
func dtypeName(d string) string {
	switch strings.ToLower(d) {
	case "bfloat16", "bf16":
		return "BF16"
	case "float16", "f16", "half":
		return "F16"
	case "float32", "f32", "float":
		return "F32"
	}
	return strings.ToUpper(d)
}
