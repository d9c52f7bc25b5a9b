// Package fakeengine gives tests of the engine process path real programs
// to run: the modelport-simulator binary, built once per test binary and
// installed under each real engine's command name.
//
//	func TestMain(m *testing.M) { os.Exit(fakeengine.Main(m)) }
package fakeengine

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

const simulatorPackage = "github.com/modelport/modelport/services/inference-worker/cmd/modelport-simulator"

// binary is the simulator built for this test binary; empty under -short,
// where the tests that run engine processes skip.
var binary string

// Main builds the simulator (unless -short), runs the tests and removes
// the build.
func Main(m *testing.M) int {
	flag.Parse()
	if !testing.Short() {
		dir, err := os.MkdirTemp("", "fakeengine-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "modelport-simulator")
		build := exec.Command("go", "build", "-o", binary, simulatorPackage)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build the fake engine %s: %v\n", simulatorPackage, err)
			return 1
		}
	}
	return m.Run()
}

// Dir returns a directory holding the simulator under each real engine's
// command name (vllm, llama-server, python3, ollama), to put first on an
// engine's search path. It skips the test under -short.
func Dir(t testing.TB) string {
	t.Helper()
	if binary == "" {
		t.Skip("runs engine processes: not under -short")
	}
	dir := t.TempDir()
	for _, name := range []string{"vllm", "llama-server", "python3", "ollama"} {
		dst := filepath.Join(dir, name)
		if err := os.Link(binary, dst); err == nil {
			continue
		}
		if err := copyFile(binary, dst); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
