package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/modelport/modelport/libs/tinygguf"
)

// testmodel writes the tiny random-weights GGUF model (and, with
// -adapter, a LoRA adapter for it) that the tests and the benchmark serve
// on a real engine: a model anyone can register without downloading
// weights. Its answers are gibberish.
func testmodel(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("modelport testmodel", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "tiny.gguf", "write the model to this file")
	adapter := fs.String("adapter", "", "also write a LoRA adapter for it to this file")
	seed := fs.Uint64("seed", 0, "seed of the random weights (0: the default model)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: modelport testmodel [-o tiny.gguf] [-adapter lora.gguf] [-seed n]\n\n"+
			"Writes a tiny llama-architecture chat model with random weights (GGUF, a few hundred KB)\n"+
			"that Ollama and llama.cpp serve on a CPU. Its answers are gibberish; everything else\n"+
			"(tokenization, chat template, stop, max_tokens, streaming, usage) is real.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("testmodel: unexpected argument %q", fs.Arg(0))
	}
	m, err := tinygguf.Model(tinygguf.Options{Seed: *seed})
	if err != nil {
		return err
	}
	if err := m.WriteFile(*out); err != nil {
		return fmt.Errorf("testmodel: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s\n", *out)
	if *adapter != "" {
		a, err := tinygguf.Adapter(tinygguf.AdapterOptions{Seed: *seed})
		if err != nil {
			return err
		}
		if err := a.WriteFile(*adapter); err != nil {
			return fmt.Errorf("testmodel: %w", err)
		}
		fmt.Fprintf(stdout, "wrote %s\n", *adapter)
	}
	return nil
}
