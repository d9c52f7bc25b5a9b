package modelstore

import (
	"errors"
	"io"
	"os"
	"runtime/debug"
	"strings"

	gguf "github.com/gpustack/gguf-parser-go"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/deployer/internal/models"
)

// ggufMagic opens every GGUF file, little- or big-endian.
var ggufMagic = [][]byte{[]byte("GGUF"), []byte("FUGG")}

// parseGGUF reads a GGUF file's header: metadata and tensor infos, not
// the weights. Whatever keeps it from being a whole GGUF file is
// errs.Invalid, saying what: the wrong magic, a header cut short, or (the
// parser checks it) tensors that reach past the end of the file.
//
// The file is mapped into memory rather than read: a header with a large
// vocabulary is read 30 times faster so (1.5 s against 50 ms for a Llama
// 3.1 8B header). A file cut while it is mapped (a copy started over it)
// would fault on access; the fault, like any panic of the parser on a
// crafted file, becomes an error instead of a crash.
func parseGGUF(path string) (f *gguf.GGUFFile, err error) {
	if err := checkMagic(path); err != nil {
		return nil, err
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			f, err = nil, errs.E(errs.Invalid, "%s could not be read as GGUF (did it change while it was read?): %v", path, r)
		}
	}()
	f, err = gguf.ParseGGUFFile(path, gguf.SkipLargeMetadata(), gguf.UseMMap())
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, errs.E(errs.Invalid, "%s is not a whole GGUF file: its header ends early (a copy cut short?)", path)
		}
		return nil, errs.E(errs.Invalid, "%s is not a valid GGUF file: %v (a copy cut short, or a file not written as GGUF?)", path, err)
	}
	return f, nil
}

// checkMagic reads a file's first four bytes, so that something that is
// no GGUF file at all is named as such.
func checkMagic(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return errs.E(errs.Invalid, "%s cannot be read: %v", path, unwrapPath(err))
	}
	defer f.Close()
	head := make([]byte, 4)
	if _, err := io.ReadFull(f, head); err != nil {
		return errs.E(errs.Invalid, "%s is not a GGUF file: it is shorter than the 4-byte magic", path)
	}
	for _, m := range ggufMagic {
		if string(head) == string(m) {
			return nil
		}
	}
	return errs.E(errs.Invalid, "%s is not a GGUF file: it starts with %q, not \"GGUF\" (a folder of safetensors needs config.json beside them)", path, printable(head))
}

func printable(b []byte) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '.'
		}
		return r
	}, string(b))
}

// inspectGGUF reads a model's GGUF header and estimates its memory with
// the parser's llama.cpp estimate: on CPUs with no layer offloaded, and on
// GPUs with all of them, at the context length contextLength picks.
func inspectGGUF(path string, contextLength func(int) int) (models.Inspection, error) {
	f, err := parseGGUF(path)
	if err != nil {
		return models.Inspection{}, err
	}
	a := f.Architecture()
	if a.Type != "model" {
		what := a.Type
		if what == "adapter" {
			what = "a LoRA adapter: register it as adapter, with base naming its model"
		}
		return models.Inspection{}, errs.E(errs.Invalid, "%s is not a model but %s", path, what)
	}
	md := f.Metadata()
	trained := int(min(a.MaximumContextLength, 1<<30))
	ctxLen := contextLength(trained)
	insp := models.Inspection{
		Format:           catalog.FormatGGUF,
		Architecture:     md.Architecture,
		ModelName:        strings.TrimSpace(md.Name),
		Parameters:       int64(md.Parameters),
		Quantization:     md.FileTypeDescriptor,
		ContextLength:    trained,
		Layers:           int(a.BlockCount),
		TensorBytes:      int64(md.Size),
		FileBytes:        int64(md.FileSize),
		EstimatedContext: ctxLen,
	}
	size := gguf.WithLLaMACppContextSize(int32(min(ctxLen, 1<<30)))
	cpu := f.EstimateLLaMACppRun(size, gguf.WithLLaMACppOffloadLayers(0)).SummarizeItem(false, 0, 0)
	insp.MemoryBytes = int64(cpu.RAM.NonUMA)
	gpu := f.EstimateLLaMACppRun(size).SummarizeItem(false, 0, 0)
	for _, v := range gpu.VRAMs {
		insp.GPUMemoryBytes += int64(v.NonUMA)
	}
	if insp.MemoryBytes <= 0 || insp.GPUMemoryBytes <= 0 {
		return models.Inspection{}, errs.E(errs.Invalid, "%s: cannot estimate the memory a %s model needs", path, md.Architecture)
	}
	return insp, nil
}

// inspectGGUFAdapter reads a LoRA adapter in GGUF.
func inspectGGUFAdapter(path string) (models.Inspection, error) {
	f, err := parseGGUF(path)
	if err != nil {
		return models.Inspection{}, err
	}
	a := f.Architecture()
	if a.Type != "adapter" {
		return models.Inspection{}, errs.E(errs.Invalid, "%s is not a LoRA adapter but a %s", path, a.Type)
	}
	md := f.Metadata()
	return models.Inspection{
		Format: catalog.FormatGGUF, Architecture: md.Architecture, ModelName: strings.TrimSpace(md.Name),
		Parameters: int64(md.Parameters), Quantization: md.FileTypeDescriptor,
		TensorBytes: int64(md.Size), FileBytes: int64(md.FileSize),
	}, nil
}
