// Package tinygguf writes GGUF files, the single-file model format of
// llama.cpp and Ollama, and builds a tiny llama-architecture chat model
// with random weights in it (Model), plus a LoRA adapter for that model
// (Adapter). The model's answers are gibberish, but an engine that loads
// it does everything else for real: tokenization, chat templating,
// sampling, stop sequences, token limits, streaming and usage counts. The
// tests, the benchmark and `modelport testmodel` use it where no real
// weights can be downloaded.
//
// The writer covers what those files need: version 3, little-endian,
// metadata of every scalar type and arrays of them, and F32 tensors.
package tinygguf

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
)

// Magic starts every GGUF file.
const Magic = "GGUF"

// Version is the GGUF version this package writes.
const Version = 3

// Alignment is where tensor data starts, and each tensor in it: a
// multiple of this many bytes, GGUF's default.
const Alignment = 32

// ValueType is a metadata value's type as GGUF numbers it.
type ValueType uint32

// The metadata value types.
const (
	TypeUint8   ValueType = 0
	TypeInt8    ValueType = 1
	TypeUint16  ValueType = 2
	TypeInt16   ValueType = 3
	TypeUint32  ValueType = 4
	TypeInt32   ValueType = 5
	TypeFloat32 ValueType = 6
	TypeBool    ValueType = 7
	TypeString  ValueType = 8
	TypeArray   ValueType = 9
	TypeUint64  ValueType = 10
	TypeInt64   ValueType = 11
	TypeFloat64 ValueType = 12
)

// TensorType is a tensor's element type as ggml numbers it. Only F32 is
// written here.
type TensorType uint32

// TypeF32 is 32-bit IEEE floats.
const TypeF32 TensorType = 0

// KV is one metadata entry. Value is one of uint8, int8, uint16, int16,
// uint32, int32, float32, bool, string, uint64, int64, float64, or a
// slice of one of them (a GGUF array).
type KV struct {
	Key   string
	Value any
}

// Tensor is one F32 tensor. Shape lists the dimensions innermost first,
// as ggml does: a matrix of n rows of k columns is {k, n}.
type Tensor struct {
	Name  string
	Shape []uint64
	Data  []float32
}

// Elements is the product of the shape.
func (t Tensor) Elements() uint64 {
	n := uint64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// File is a GGUF file's content: metadata in order, then tensors in order.
type File struct {
	KV      []KV
	Tensors []Tensor
}

// Get returns the value of key, or nil.
func (f *File) Get(key string) any {
	for _, kv := range f.KV {
		if kv.Key == key {
			return kv.Value
		}
	}
	return nil
}

// WriteTo writes f in GGUF version 3. It checks what it can before writing
// anything: every tensor's data matches its shape, every value has a type
// GGUF knows.
func (f *File) WriteTo(w io.Writer) (int64, error) {
	for _, kv := range f.KV {
		if _, err := valueType(kv.Value); err != nil {
			return 0, fmt.Errorf("gguf: metadata %q: %w", kv.Key, err)
		}
	}
	for _, t := range f.Tensors {
		if len(t.Shape) == 0 || len(t.Shape) > 4 {
			return 0, fmt.Errorf("gguf: tensor %q: %d dimensions, want 1 to 4", t.Name, len(t.Shape))
		}
		if uint64(len(t.Data)) != t.Elements() {
			return 0, fmt.Errorf("gguf: tensor %q: %d values for shape %v", t.Name, len(t.Data), t.Shape)
		}
	}
	cw := &countingWriter{w: bufio.NewWriter(w)}
	e := encoder{w: cw}
	e.raw([]byte(Magic))
	e.u32(Version)
	e.u64(uint64(len(f.Tensors)))
	e.u64(uint64(len(f.KV)))
	for _, kv := range f.KV {
		e.str(kv.Key)
		e.value(kv.Value)
	}
	var offset uint64
	for _, t := range f.Tensors {
		e.str(t.Name)
		e.u32(uint32(len(t.Shape)))
		for _, d := range t.Shape {
			e.u64(d)
		}
		e.u32(uint32(TypeF32))
		e.u64(offset)
		offset += pad(4 * t.Elements())
	}
	e.zeros(pad(uint64(cw.n)) - uint64(cw.n))
	for _, t := range f.Tensors {
		buf := make([]byte, 4*len(t.Data))
		for i, v := range t.Data {
			binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
		}
		e.raw(buf)
		e.zeros(pad(uint64(len(buf))) - uint64(len(buf)))
	}
	if e.err == nil {
		e.err = cw.w.(*bufio.Writer).Flush()
	}
	return cw.n, e.err
}

// WriteFile writes f to path, whole or not at all: to a temporary file in
// the same folder first, then renamed.
func (f *File) WriteFile(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	if _, err := f.WriteTo(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func pad(n uint64) uint64 { return (n + Alignment - 1) / Alignment * Alignment }

// valueType returns the GGUF type of a metadata value.
func valueType(v any) (ValueType, error) {
	switch v.(type) {
	case uint8:
		return TypeUint8, nil
	case int8:
		return TypeInt8, nil
	case uint16:
		return TypeUint16, nil
	case int16:
		return TypeInt16, nil
	case uint32:
		return TypeUint32, nil
	case int32:
		return TypeInt32, nil
	case float32:
		return TypeFloat32, nil
	case bool:
		return TypeBool, nil
	case string:
		return TypeString, nil
	case uint64:
		return TypeUint64, nil
	case int64:
		return TypeInt64, nil
	case float64:
		return TypeFloat64, nil
	case []uint8, []int8, []uint16, []int16, []uint32, []int32, []float32, []bool, []string, []uint64, []int64, []float64:
		return TypeArray, nil
	}
	return 0, fmt.Errorf("values of type %T have no GGUF type", v)
}

// encoder writes little-endian GGUF values, keeping the first error.
type encoder struct {
	w   io.Writer
	err error
}

func (e *encoder) raw(b []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(b)
	}
}

func (e *encoder) zeros(n uint64) { e.raw(make([]byte, n)) }

func (e *encoder) u32(v uint32) { e.raw(binary.LittleEndian.AppendUint32(nil, v)) }
func (e *encoder) u64(v uint64) { e.raw(binary.LittleEndian.AppendUint64(nil, v)) }

func (e *encoder) str(s string) {
	e.u64(uint64(len(s)))
	e.raw([]byte(s))
}

// value writes a value's type and the value.
func (e *encoder) value(v any) {
	t, _ := valueType(v) // checked by WriteTo
	e.u32(uint32(t))
	switch a := v.(type) {
	case []uint8:
		array(e, TypeUint8, a)
	case []int8:
		array(e, TypeInt8, a)
	case []uint16:
		array(e, TypeUint16, a)
	case []int16:
		array(e, TypeInt16, a)
	case []uint32:
		array(e, TypeUint32, a)
	case []int32:
		array(e, TypeInt32, a)
	case []float32:
		array(e, TypeFloat32, a)
	case []bool:
		array(e, TypeBool, a)
	case []string:
		array(e, TypeString, a)
	case []uint64:
		array(e, TypeUint64, a)
	case []int64:
		array(e, TypeInt64, a)
	case []float64:
		array(e, TypeFloat64, a)
	default:
		e.scalar(v)
	}
}

func array[T any](e *encoder, t ValueType, values []T) {
	e.u32(uint32(t))
	e.u64(uint64(len(values)))
	for _, v := range values {
		e.scalar(v)
	}
}

// scalar writes a value without its type.
func (e *encoder) scalar(v any) {
	switch x := v.(type) {
	case string:
		e.str(x)
	case bool:
		b := byte(0)
		if x {
			b = 1
		}
		e.raw([]byte{b})
	default:
		if e.err == nil {
			e.err = binary.Write(e.w, binary.LittleEndian, x)
		}
	}
}

// countingWriter counts the bytes written, for the padding.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
