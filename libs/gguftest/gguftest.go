// Package gguftest writes small GGUF files for tests: a llama-style
// header with its metadata and tensor infos, followed by zeroed tensor
// data. The data is written as a hole (a sparse file), so a header that
// describes a model of many gigabytes takes a few kilobytes on disk. The
// files load as GGUF and inspect as the model they describe; their
// weights are zero, so no engine answers anything useful with them.
package gguftest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
)

// Value types of GGUF metadata.
const (
	typeUint32  = 4
	typeFloat32 = 6
	typeString  = 8
	typeArray   = 9
)

// GGML tensor types, with the bytes and elements of one block.
const (
	TypeF32  = 0
	TypeF16  = 1
	TypeQ8_0 = 8
	TypeQ4_K = 12
)

var blocks = map[uint32]struct{ elems, bytes int64 }{
	TypeF32:  {1, 4},
	TypeF16:  {1, 2},
	TypeQ8_0: {32, 34},
	TypeQ4_K: {256, 144},
}

// File types (general.file_type) for the tensor types above.
var fileTypes = map[uint32]uint32{TypeF32: 0, TypeF16: 1, TypeQ8_0: 7, TypeQ4_K: 15}

// Model describes a llama-architecture model. Sizes must be multiples of
// the tensor type's block (256 for Q4_K, 32 for Q8_0).
type Model struct {
	Name          string // general.name
	Architecture  string // default: llama
	ContextLength int    // <arch>.context_length
	Layers        int    // <arch>.block_count
	Embedding     int    // <arch>.embedding_length
	FeedForward   int    // <arch>.feed_forward_length
	Heads         int    // <arch>.attention.head_count
	KVHeads       int    // <arch>.attention.head_count_kv
	Vocab         int    // tokens in the vocabulary and rows of token_embd
	// Type is the tensors' type (default F16); norms are always F32.
	Type uint32
	// Adapter makes it a LoRA adapter (general.type "adapter") with
	// rank-Rank A and B matrices for each layer's attention query and value.
	Adapter bool
	Rank    int
}

// Tiny is a model small enough to exist for real: two layers, a byte-level
// vocabulary, about 1.1 MB of F16 weights.
func Tiny() Model {
	return Model{Name: "Tiny Llama", ContextLength: 2048, Layers: 2, Embedding: 64, FeedForward: 256, Heads: 4, KVHeads: 4, Vocab: 256, Type: TypeF16}
}

// Large is a header of a model the size of Llama 3.1 8B at Q4_K: about
// 4.6 GB of weights, written as a hole.
func Large() Model {
	return Model{Name: "Large Llama", ContextLength: 131072, Layers: 32, Embedding: 4096, FeedForward: 14336, Heads: 32, KVHeads: 8, Vocab: 128256, Type: TypeQ4_K}
}

// TinyAdapter is a LoRA adapter for Tiny.
func TinyAdapter() Model {
	m := Tiny()
	m.Name, m.Adapter, m.Rank = "Tiny Llama LoRA", true, 8
	return m
}

type tensor struct {
	name string
	dims []int64
	typ  uint32
}

func (m Model) arch() string {
	if m.Architecture == "" {
		return "llama"
	}
	return m.Architecture
}

func (m Model) typ() uint32 {
	if m.Type == 0 && !m.Adapter {
		return TypeF16
	}
	if m.Adapter {
		return TypeF32
	}
	return m.Type
}

// tensors lists the model's tensors as llama.cpp names them.
func (m Model) tensors() []tensor {
	t, e, ff, kv := m.typ(), int64(m.Embedding), int64(m.FeedForward), int64(m.Embedding/m.Heads*m.KVHeads)
	if m.Adapter {
		r := int64(m.Rank)
		var ts []tensor
		for i := range m.Layers {
			for _, w := range []struct {
				name string
				out  int64
			}{{"attn_q", e}, {"attn_v", kv}} {
				ts = append(ts,
					tensor{fmt.Sprintf("blk.%d.%s.weight.lora_a", i, w.name), []int64{e, r}, TypeF32},
					tensor{fmt.Sprintf("blk.%d.%s.weight.lora_b", i, w.name), []int64{r, w.out}, TypeF32})
			}
		}
		return ts
	}
	ts := []tensor{{"token_embd.weight", []int64{e, int64(m.Vocab)}, t}}
	for i := range m.Layers {
		p := fmt.Sprintf("blk.%d.", i)
		ts = append(ts,
			tensor{p + "attn_norm.weight", []int64{e}, TypeF32},
			tensor{p + "attn_q.weight", []int64{e, e}, t},
			tensor{p + "attn_k.weight", []int64{e, kv}, t},
			tensor{p + "attn_v.weight", []int64{e, kv}, t},
			tensor{p + "attn_output.weight", []int64{e, e}, t},
			tensor{p + "ffn_norm.weight", []int64{e}, TypeF32},
			tensor{p + "ffn_gate.weight", []int64{e, ff}, t},
			tensor{p + "ffn_up.weight", []int64{e, ff}, t},
			tensor{p + "ffn_down.weight", []int64{ff, e}, t},
		)
	}
	return append(ts, tensor{"output_norm.weight", []int64{e}, TypeF32}, tensor{"output.weight", []int64{e, int64(m.Vocab)}, t})
}

func (t tensor) size() int64 {
	n := int64(1)
	for _, d := range t.dims {
		n *= d
	}
	b := blocks[t.typ]
	return n / b.elems * b.bytes
}

const alignment = 32

func pad(n int64) int64 { return (n + alignment - 1) / alignment * alignment }

// Header returns the file up to its tensor data, and the data's size.
func (m Model) Header() (header []byte, dataBytes int64) {
	var b bytes.Buffer
	le := binary.LittleEndian
	str := func(s string) {
		_ = binary.Write(&b, le, uint64(len(s)))
		b.WriteString(s)
	}
	type kv struct {
		key string
		put func()
	}
	u32 := func(k string, v uint32) kv {
		return kv{k, func() { _ = binary.Write(&b, le, uint32(typeUint32)); _ = binary.Write(&b, le, v) }}
	}
	f32 := func(k string, v float32) kv {
		return kv{k, func() { _ = binary.Write(&b, le, uint32(typeFloat32)); _ = binary.Write(&b, le, math.Float32bits(v)) }}
	}
	s := func(k, v string) kv {
		return kv{k, func() { _ = binary.Write(&b, le, uint32(typeString)); str(v) }}
	}
	a := m.arch()
	meta := []kv{
		s("general.architecture", a),
		s("general.name", m.Name),
		u32("general.alignment", alignment),
	}
	if m.Adapter {
		meta = append(meta, s("general.type", "adapter"), s("adapter.type", "lora"), f32("adapter.lora.alpha", float32(2*m.Rank)))
	} else {
		meta = append(meta,
			u32("general.file_type", fileTypes[m.typ()]),
			u32(a+".context_length", uint32(m.ContextLength)),
			u32(a+".block_count", uint32(m.Layers)),
			u32(a+".embedding_length", uint32(m.Embedding)),
			u32(a+".feed_forward_length", uint32(m.FeedForward)),
			u32(a+".attention.head_count", uint32(m.Heads)),
			u32(a+".attention.head_count_kv", uint32(m.KVHeads)),
			f32(a+".attention.layer_norm_rms_epsilon", 1e-5),
			f32(a+".rope.freq_base", 10000),
			u32(a+".vocab_size", uint32(m.Vocab)),
			s("tokenizer.ggml.model", "llama"),
			kv{"tokenizer.ggml.tokens", func() {
				_ = binary.Write(&b, le, uint32(typeArray))
				_ = binary.Write(&b, le, uint32(typeString))
				_ = binary.Write(&b, le, uint64(m.Vocab))
				for i := range m.Vocab {
					str(fmt.Sprintf("<%d>", i))
				}
			}},
		)
	}
	tensors := m.tensors()
	b.WriteString("GGUF")
	_ = binary.Write(&b, le, uint32(3))
	_ = binary.Write(&b, le, uint64(len(tensors)))
	_ = binary.Write(&b, le, uint64(len(meta)))
	for _, e := range meta {
		str(e.key)
		e.put()
	}
	var offset int64
	for _, t := range tensors {
		str(t.name)
		_ = binary.Write(&b, le, uint32(len(t.dims)))
		for _, d := range t.dims {
			_ = binary.Write(&b, le, uint64(d))
		}
		_ = binary.Write(&b, le, t.typ)
		_ = binary.Write(&b, le, uint64(offset))
		offset = pad(offset + t.size())
	}
	for int64(b.Len())%alignment != 0 {
		b.WriteByte(0)
	}
	return b.Bytes(), offset
}

// Write writes the model to path: its header, then its tensor data as a
// hole of zeros.
func Write(path string, m Model) error {
	header, data := m.Header()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(header); err != nil {
		f.Close()
		return err
	}
	if err := f.Truncate(int64(len(header)) + data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteBytes writes b to path, for files that are broken on purpose, such
// as a header cut short.
func WriteBytes(path string, b []byte) error { return os.WriteFile(path, b, 0o644) }
