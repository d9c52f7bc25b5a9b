package engine_test

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// simulatorBinary is the modelport-simulator built for this test binary;
// empty under -short, where the tests that run engine processes skip.
var simulatorBinary string

const simulatorPackage = "github.com/modelport/modelport/services/inference-worker/cmd/modelport-simulator"

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if !testing.Short() {
		dir, err := os.MkdirTemp("", "engine-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		simulatorBinary = filepath.Join(dir, "modelport-simulator")
		build := exec.Command("go", "build", "-o", simulatorBinary, simulatorPackage)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build the fake engine %s: %v\n", simulatorPackage, err)
			return 1
		}
	}
	return m.Run()
}

// fakeEngines returns a directory holding the simulator under each real
// engine's command name, to put first on an engine's search path.
func fakeEngines(t *testing.T) string {
	t.Helper()
	if simulatorBinary == "" {
		t.Skip("runs engine processes: not under -short")
	}
	dir := t.TempDir()
	for _, name := range []string{"vllm", "llama-server", "python3", "ollama"} {
		dst := filepath.Join(dir, name)
		if err := os.Link(simulatorBinary, dst); err == nil {
			continue
		}
		if err := copyFile(simulatorBinary, dst); err != nil {
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
