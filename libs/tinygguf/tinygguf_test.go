package tinygguf_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/tinygguf"
)

// decoded is a GGUF file read back by the small, independent reader below,
// which follows the format's specification rather than the writer.
type decoded struct {
	version    uint32
	kv         map[string]any
	keys       []string
	tensors    []tensorInfo
	dataOffset int64
	size       int64
}

type tensorInfo struct {
	name   string
	shape  []uint64
	typ    uint32
	offset uint64
}

func decode(t *testing.T, b []byte) decoded {
	t.Helper()
	r := bytes.NewReader(b)
	read := func(v any) {
		t.Helper()
		if err := binary.Read(r, binary.LittleEndian, v); err != nil {
			t.Fatalf("read at %d: %v", int(r.Size())-r.Len(), err)
		}
	}
	str := func() string {
		var n uint64
		read(&n)
		s := make([]byte, n)
		if _, err := io.ReadFull(r, s); err != nil {
			t.Fatal(err)
		}
		return string(s)
	}
	var scalar func(typ uint32) any
	scalar = func(typ uint32) any {
		switch typ {
		case 0:
			var v uint8
			read(&v)
			return v
		case 1:
			var v int8
			read(&v)
			return v
		case 2:
			var v uint16
			read(&v)
			return v
		case 3:
			var v int16
			read(&v)
			return v
		case 4:
			var v uint32
			read(&v)
			return v
		case 5:
			var v int32
			read(&v)
			return v
		case 6:
			var v float32
			read(&v)
			return v
		case 7:
			var v uint8
			read(&v)
			if v > 1 {
				t.Fatalf("bool %d", v)
			}
			return v == 1
		case 8:
			return str()
		case 9:
			var elem uint32
			var n uint64
			read(&elem)
			read(&n)
			out := make([]any, n)
			for i := range out {
				out[i] = scalar(elem)
			}
			return out
		case 10:
			var v uint64
			read(&v)
			return v
		case 11:
			var v int64
			read(&v)
			return v
		case 12:
			var v float64
			read(&v)
			return v
		}
		t.Fatalf("unknown value type %d", typ)
		return nil
	}
	magic := make([]byte, 4)
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != "GGUF" {
		t.Fatalf("magic %q, %v", magic, err)
	}
	d := decoded{kv: map[string]any{}, size: int64(len(b))}
	read(&d.version)
	var nTensors, nKV uint64
	read(&nTensors)
	read(&nKV)
	for range nKV {
		k := str()
		var typ uint32
		read(&typ)
		d.kv[k] = scalar(typ)
		d.keys = append(d.keys, k)
	}
	for range nTensors {
		ti := tensorInfo{name: str()}
		var dims uint32
		read(&dims)
		ti.shape = make([]uint64, dims)
		for i := range ti.shape {
			read(&ti.shape[i])
		}
		read(&ti.typ)
		read(&ti.offset)
		d.tensors = append(d.tensors, ti)
	}
	pos := int64(len(b) - r.Len())
	d.dataOffset = (pos + 31) / 32 * 32
	return d
}

func elements(shape []uint64) uint64 {
	n := uint64(1)
	for _, s := range shape {
		n *= s
	}
	return n
}

func render(t *testing.T, f *tinygguf.File) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := f.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Errorf("WriteTo reported %d bytes, wrote %d", n, buf.Len())
	}
	return buf.Bytes()
}

func TestModelFile(t *testing.T) {
	m, err := tinygguf.Model(tinygguf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := render(t, m)
	if len(b) < 100<<10 || len(b) > 1<<20 {
		t.Errorf("model is %d bytes, want a few hundred KB", len(b))
	}
	d := decode(t, b)
	if d.version != 3 {
		t.Errorf("version %d", d.version)
	}
	// What llama.cpp's llama loader and Ollama need to load and chat.
	want := map[string]any{
		"general.architecture":                   "llama",
		"general.file_type":                      uint32(0),
		"llama.context_length":                   uint32(2048),
		"llama.embedding_length":                 uint32(64),
		"llama.block_count":                      uint32(2),
		"llama.feed_forward_length":              uint32(128),
		"llama.attention.head_count":             uint32(4),
		"llama.attention.head_count_kv":          uint32(2),
		"llama.attention.layer_norm_rms_epsilon": float32(1e-5),
		"llama.rope.dimension_count":             uint32(16),
		"tokenizer.ggml.model":                   "llama",
		"tokenizer.ggml.bos_token_id":            uint32(1),
		"tokenizer.ggml.eos_token_id":            uint32(4),
		"tokenizer.ggml.add_bos_token":           true,
		"tokenizer.ggml.add_space_prefix":        false,
		"tokenizer.chat_template":                tinygguf.ChatTemplate,
	}
	for k, v := range want {
		if got := d.kv[k]; got != v {
			t.Errorf("%s = %#v, want %#v", k, got, v)
		}
	}
	tokens, _ := d.kv["tokenizer.ggml.tokens"].([]any)
	if len(tokens) != tinygguf.VocabularySize || tokens[4] != "<|im_end|>" || tokens[5] != "<0x00>" || tokens[5+'A'] != "<0x41>" || tokens[260] != "<0xFF>" {
		t.Errorf("vocabulary: %d tokens, %v … %v", len(tokens), tokens[:min(6, len(tokens))], tokens[max(0, len(tokens)-1):])
	}
	types, _ := d.kv["tokenizer.ggml.token_type"].([]any)
	if len(types) != len(tokens) || types[0] != int32(2) || types[3] != int32(3) || types[5] != int32(6) {
		t.Errorf("token types %v…", types[:min(6, len(types))])
	}
	if scores, _ := d.kv["tokenizer.ggml.scores"].([]any); len(scores) != len(tokens) {
		t.Errorf("%d scores for %d tokens", len(scores), len(tokens))
	}
	if !strings.Contains(tinygguf.ChatTemplate, "<|im_start|>") {
		t.Error("the chat template is not ChatML")
	}

	// Every tensor llama.cpp's llama architecture requires, F32, with its
	// data aligned, in the file and not overlapping the next.
	names := map[string][]uint64{}
	var next uint64
	for _, ti := range d.tensors {
		names[ti.name] = ti.shape
		if ti.typ != 0 {
			t.Errorf("%s: type %d, want F32", ti.name, ti.typ)
		}
		if ti.offset%32 != 0 || ti.offset < next {
			t.Errorf("%s: offset %d (previous tensor ends at %d)", ti.name, ti.offset, next)
		}
		next = ti.offset + 4*elements(ti.shape)
		if end := d.dataOffset + int64(next); end > d.size {
			t.Errorf("%s ends at %d, past the end of the file (%d)", ti.name, end, d.size)
		}
	}
	if d.size%32 != 0 {
		t.Errorf("file size %d is not padded to the alignment", d.size)
	}
	required := map[string][]uint64{
		"token_embd.weight":  {64, 261},
		"output_norm.weight": {64},
		"output.weight":      {64, 261},
	}
	for l := range 2 {
		for name, shape := range map[string][]uint64{
			"attn_norm": {64}, "attn_q": {64, 64}, "attn_k": {64, 32}, "attn_v": {64, 32}, "attn_output": {64, 64},
			"ffn_norm": {64}, "ffn_gate": {64, 128}, "ffn_up": {64, 128}, "ffn_down": {128, 64},
		} {
			required[fmt.Sprintf("blk.%d.%s.weight", l, name)] = shape
		}
	}
	for name, shape := range required {
		if got, ok := names[name]; !ok || !slices.Equal(got, shape) {
			t.Errorf("tensor %s: shape %v, want %v", name, got, shape)
		}
	}
	if len(d.tensors) != len(required) {
		t.Errorf("%d tensors, want %d", len(d.tensors), len(required))
	}

	// The same options give the same bytes; another seed other weights.
	again, _ := tinygguf.Model(tinygguf.Options{})
	if !bytes.Equal(render(t, again), b) {
		t.Error("the default model differs between two calls")
	}
	other, _ := tinygguf.Model(tinygguf.Options{Seed: 99})
	if ob := render(t, other); len(ob) != len(b) || bytes.Equal(ob, b) {
		t.Error("another seed gave the same weights, or another size")
	}
}

// TestModelKeepsAnswersPrintable reads the output layer back: only
// printable ASCII other than '<', and the end of the answer, can win.
func TestModelKeepsAnswersPrintable(t *testing.T) {
	m, err := tinygguf.Model(tinygguf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var out []float32
	for _, tn := range m.Tensors {
		if tn.Name == "output.weight" {
			out = tn.Data
		}
	}
	for tok := range tinygguf.VocabularySize {
		row := out[tok*64 : (tok+1)*64]
		b := tok - 5
		printable := b >= 0x20 && b < 0x7f && b != '<'
		switch {
		case printable && (row[0] != 0 || slices.Max(row) == 0):
			t.Errorf("token %d (%q): reads the constant channel, or nothing", tok, rune(b))
		case tok == tinygguf.TokenIMEnd && !(row[0] != 0 && slices.Max(row[1:]) == 0 && slices.Min(row[1:]) == 0):
			t.Errorf("<|im_end|> should read only the constant channel: %v", row[:4])
		case !printable && tok != tinygguf.TokenIMEnd && row[0] > -1:
			t.Errorf("token %d should be suppressed: %v", tok, row[0])
		}
	}
}

func TestAdapterFile(t *testing.T) {
	a, err := tinygguf.Adapter(tinygguf.AdapterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := decode(t, render(t, a))
	for k, v := range map[string]any{"general.type": "adapter", "general.architecture": "llama", "adapter.type": "lora", "adapter.lora.alpha": float32(4)} {
		if d.kv[k] != v {
			t.Errorf("%s = %#v, want %#v", k, d.kv[k], v)
		}
	}
	// llama.cpp pairs X.lora_a {in, r} with X.lora_b {r, out} for a base
	// tensor X of shape {in, out}.
	base, _ := tinygguf.Model(tinygguf.Options{})
	shapes := map[string][]uint64{}
	for _, tn := range base.Tensors {
		shapes[tn.Name] = tn.Shape
	}
	if len(d.tensors) != 8 {
		t.Errorf("%d adapter tensors, want 8", len(d.tensors))
	}
	for i := 0; i+1 < len(d.tensors); i += 2 {
		ta, tb := d.tensors[i], d.tensors[i+1]
		name, ok := strings.CutSuffix(ta.name, ".lora_a")
		if !ok || tb.name != name+".lora_b" {
			t.Fatalf("unpaired tensors %s, %s", ta.name, tb.name)
		}
		s := shapes[name]
		if s == nil || ta.shape[0] != s[0] || tb.shape[1] != s[1] || ta.shape[1] != tb.shape[0] {
			t.Errorf("%s: a %v b %v for base %v", name, ta.shape, tb.shape, s)
		}
	}
}

func TestWriteRejects(t *testing.T) {
	for name, f := range map[string]*tinygguf.File{
		"an unknown value type": {KV: []tinygguf.KV{{Key: "x", Value: struct{}{}}}},
		"data short of shape":   {Tensors: []tinygguf.Tensor{{Name: "w", Shape: []uint64{2, 2}, Data: make([]float32, 3)}}},
		"no dimensions":         {Tensors: []tinygguf.Tensor{{Name: "w"}}},
	} {
		var buf bytes.Buffer
		if _, err := f.WriteTo(&buf); err == nil || buf.Len() != 0 {
			t.Errorf("%s: err %v, %d bytes written", name, err, buf.Len())
		}
	}
	if _, err := tinygguf.Model(tinygguf.Options{Layers: 100}); err == nil {
		t.Error("100 layers accepted")
	}
}

func TestWriteValues(t *testing.T) {
	f := &tinygguf.File{KV: []tinygguf.KV{
		{Key: "u8", Value: uint8(7)}, {Key: "i16", Value: int16(-3)}, {Key: "u64", Value: uint64(1 << 40)},
		{Key: "f64", Value: math.Pi}, {Key: "b", Value: false}, {Key: "arr", Value: []int64{-1, 2}},
		{Key: "bools", Value: []bool{true, false}},
	}}
	d := decode(t, render(t, f))
	if d.kv["u8"] != uint8(7) || d.kv["i16"] != int16(-3) || d.kv["u64"] != uint64(1<<40) || d.kv["f64"] != math.Pi || d.kv["b"] != false {
		t.Errorf("scalars %v", d.kv)
	}
	if arr := d.kv["arr"].([]any); len(arr) != 2 || arr[0] != int64(-1) {
		t.Errorf("array %v", arr)
	}
	if bs := d.kv["bools"].([]any); len(bs) != 2 || bs[0] != true {
		t.Errorf("bools %v", bs)
	}
	if !slices.Equal(d.keys, []string{"u8", "i16", "u64", "f64", "b", "arr", "bools"}) {
		t.Errorf("keys out of order: %v", d.keys)
	}
}

func TestWriteFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tiny.gguf")
	m, _ := tinygguf.Model(tinygguf.Options{Layers: 1})
	if err := m.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || !bytes.HasPrefix(b, []byte("GGUF")) {
		t.Fatalf("read back: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("left behind: %v", entries)
	}
	if err := m.WriteFile(filepath.Join(t.TempDir(), "missing", "x.gguf")); err == nil {
		t.Error("wrote into a missing folder")
	}
}
