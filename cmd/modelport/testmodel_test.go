package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/tinygguf"
)

// TestTestModel: `modelport testmodel` writes the tiny model, and its LoRA
// adapter when asked, byte for byte what tinygguf builds.
func TestTestModel(t *testing.T) {
	dir := t.TempDir()
	model, adapter := filepath.Join(dir, "tiny.gguf"), filepath.Join(dir, "lora.gguf")
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"testmodel", "-o", model, "-adapter", adapter}, config.Map(nil), &stdout, &stderr); err != nil {
		t.Fatalf("testmodel: %v (%s)", err, stderr.String())
	}
	if got := stdout.String(); got != "wrote "+model+"\nwrote "+adapter+"\n" {
		t.Errorf("stdout %q", got)
	}
	for path, build := range map[string]func() (*tinygguf.File, error){
		model:   func() (*tinygguf.File, error) { return tinygguf.Model(tinygguf.Options{}) },
		adapter: func() (*tinygguf.File, error) { return tinygguf.Adapter(tinygguf.AdapterOptions{}) },
	} {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		f, err := build()
		if err != nil {
			t.Fatal(err)
		}
		var want bytes.Buffer
		if _, err := f.WriteTo(&want); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want.Bytes()) {
			t.Errorf("%s: %d bytes, not the tiny model's %d", path, len(got), want.Len())
		}
	}
	if err := run(context.Background(), []string{"testmodel", "extra"}, config.Map(nil), &stdout, &stderr); err == nil || !strings.Contains(err.Error(), "unexpected argument") {
		t.Errorf("an extra argument: %v", err)
	}
	if err := run(context.Background(), []string{"testmodel", "-o", filepath.Join(dir, "missing", "x.gguf")}, config.Map(nil), &stdout, &stderr); err == nil {
		t.Error("wrote into a missing folder")
	}
}
