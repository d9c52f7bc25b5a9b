package modelstore

import (
	"context"
	"path/filepath"
	"testing"

	gguf "github.com/gpustack/gguf-parser-go"
	"github.com/modelport/modelport/libs/gguftest"
)

// BenchmarkInspectGGUF inspects the header of a model shaped like Llama
// 3.1 8B at Q4_K (a 128256-token vocabulary), beside the parser reading
// the same file without a memory map, the baseline parseGGUF improves on:
//
//	go test -run x -bench InspectGGUF ./services/deployer/internal/modelstore
func BenchmarkInspectGGUF(b *testing.B) {
	dir := b.TempDir()
	path := filepath.Join(dir, "llama-8b-Q4_K_M.gguf")
	if err := gguftest.Write(path, gguftest.Large()); err != nil {
		b.Fatal(err)
	}
	in, err := New([]string{dir})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("inspect", func(b *testing.B) {
		for b.Loop() {
			if _, err := in.Inspect(context.Background(), path, func(int) int { return 8192 }); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parse-unmapped", func(b *testing.B) {
		for b.Loop() {
			if _, err := gguf.ParseGGUFFile(path, gguf.SkipLargeMetadata()); err != nil {
				b.Fatal(err)
			}
		}
	})
}
