package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The tests below run the built binary, under the names of the engines it
// stands in for, as the engine adapters' tests do.

var (
	buildOnce sync.Once
	builtPath string
	buildErr  error
)

// binary builds the command once per test run and returns a copy of it
// named name in a fresh directory (a symbolic link when link is set).
func binary(t *testing.T, name string, link bool) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "modelport-simulator-test")
		if err != nil {
			buildErr = err
			return
		}
		builtPath = filepath.Join(dir, "modelport-simulator")
		out, err := exec.Command("go", "build", "-o", builtPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	path := filepath.Join(t.TempDir(), name)
	if link {
		if err := os.Symlink(builtPath, path); err != nil {
			t.Fatal(err)
		}
		return path
	}
	b, err := os.ReadFile(builtPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtPath != "" {
		os.RemoveAll(filepath.Dir(builtPath))
	}
	os.Exit(code)
}

// proc is the binary running.
type proc struct {
	cmd    *exec.Cmd
	base   string // http://host:port, once listening
	stderr *syncBuffer
	done   chan struct{} // closed when it has exited
}

// environ is a small, known environment with extra added: PATH and HOME
// only from the test's own.
func environ(extra ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, extra...)
}

// startBinary runs path with args and env and waits until it listens;
// the process is killed when the test ends if it is still running.
func startBinary(t *testing.T, path string, args, env []string) *proc {
	t.Helper()
	p := exited(t, path, args, env)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := listeningOn.FindStringSubmatch(p.stderr.String()); m != nil {
			p.base = "http://" + m[1]
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("exited with %v before listening; stderr:\n%s", p.cmd.ProcessState, p.stderr)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("not listening after 10s; stderr:\n%s", p.stderr)
		}
	}
}

// exited starts path without waiting for anything.
func exited(t *testing.T, path string, args, env []string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(path, args...), stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout = io.Discard
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// wait returns the exit code, failing the test if the process is still
// running after d.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		t.Fatalf("still running after %v; stderr:\n%s", d, p.stderr)
		return -1
	}
}

func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// freePort returns a port nothing listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
}

type recorded struct {
	Argv []string          `json:"argv"`
	Env  map[string]string `json:"env"`
}

func readRecord(t *testing.T, path string) recorded {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rec recorded
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("record %s: %v", b, err)
	}
	return rec
}

// Each engine's command line, under that engine's name: it serves health
// and chat, records how it was started, and SIGTERM stops it with exit
// code 0.
func TestBinaryImpersonation(t *testing.T) {
	port := freePort(t)
	tests := []struct {
		name   string
		link   bool
		args   []string
		env    []string
		health string // the body GET /health answers 200 with; "-": no such route
		setup  func(t *testing.T, base string)
		model  string
	}{
		{
			name: "vllm",
			args: []string{"serve", "/models/qwen", "--served-model-name", "u-1/chat", "--host", "127.0.0.1", "--port", port,
				"--enable-lora", "--max-model-len", "4096", "--gpu-memory-utilization", "0.9"},
			env:   []string{"VLLM_LOGGING_LEVEL=DEBUG"},
			model: "u-1/chat",
		},
		{
			name: "llama-server", link: true,
			args:   []string{"-m", "/models/q.gguf", "--alias", "u-1/chat", "--port", "0", "-c", "4096", "-ngl", "99", "-np", "2"},
			env:    []string{"LLAMA_ARG_THREADS=4"},
			health: `{"status":"ok"}` + "\n",
			model:  "u-1/chat",
		},
		{
			name:  "python3",
			args:  []string{"-m", "sglang.launch_server", "--model-path", "/models/m", "--served-model-name", "u-1/chat", "--port", "0", "--tp", "1"},
			env:   []string{"SGLANG_LOG_LEVEL=info"},
			model: "u-1/chat",
		},
		{
			name:   "ollama",
			args:   []string{"serve"},
			env:    []string{"OLLAMA_HOST=127.0.0.1:0", "OLLAMA_MODELS=/var/lib/ollama"},
			health: "-",
			setup: func(t *testing.T, base string) {
				if status, body := httpPost(t, base+"/api/pull", map[string]any{"model": "llama3.2:1b"}); status != http.StatusOK {
					t.Fatalf("pull: %d %s", status, body)
				}
				if status, body := httpPost(t, base+"/api/copy", map[string]any{"source": "llama3.2:1b", "destination": "u-1/chat"}); status != http.StatusOK {
					t.Fatalf("copy: %d %s", status, body)
				}
			},
			model: "u-1/chat",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			record := filepath.Join(t.TempDir(), "record.json")
			env := environ(append([]string{"MODELPORT_SIM_RECORD=" + record, "CUDA_VISIBLE_DEVICES=0", "HF_HOME=/var/cache/hf", "UNRELATED=x"}, tc.env...)...)
			p := startBinary(t, binary(t, tc.name, tc.link), tc.args, env)
			if tc.name == "vllm" && p.base != "http://127.0.0.1:"+port {
				t.Errorf("listening on %s, want the --port given, %s", p.base, port)
			}
			if tc.health != "-" {
				if status, body := httpGet(t, p.base+"/health"); status != http.StatusOK || body != tc.health {
					t.Errorf("health %d %q, want 200 %q", status, body, tc.health)
				}
			} else if status, body := httpGet(t, p.base+"/"); status != http.StatusOK || body != "Ollama is running" {
				t.Errorf("GET / = %d %q", status, body)
			}
			if tc.setup != nil {
				tc.setup(t, p.base)
			}
			chatContent(t, p.base+"/v1", tc.model)

			rec := readRecord(t, record)
			if got, want := rec.Argv, append([]string{tc.name}, tc.args...); !slices.Equal(got, want) {
				t.Errorf("recorded argv %q, want %q", got, want)
			}
			wantEnv := map[string]string{"MODELPORT_SIM_RECORD": record, "CUDA_VISIBLE_DEVICES": "0", "HF_HOME": "/var/cache/hf"}
			for _, kv := range tc.env {
				k, v, _ := strings.Cut(kv, "=")
				wantEnv[k] = v
			}
			if !maps.Equal(rec.Env, wantEnv) {
				t.Errorf("recorded env %v, want %v", rec.Env, wantEnv)
			}

			p.signal(t, syscall.SIGTERM)
			if code := p.wait(t, 10*time.Second); code != 0 {
				t.Errorf("exit code %d after SIGTERM, want 0; stderr:\n%s", code, p.stderr)
			}
		})
	}
}

func TestBinaryStopsOnSIGINT(t *testing.T) {
	p := startBinary(t, binary(t, "modelport-simulator", false), []string{"--served-model-name", "m", "--port", "0"}, environ())
	chatContent(t, p.base+"/v1", "m")
	p.signal(t, os.Interrupt)
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGINT, want 0", code)
	}
}

func TestBinaryExitAtStart(t *testing.T) {
	p := exited(t, binary(t, "vllm", false), []string{"serve", "m"}, environ("MODELPORT_SIM_EXIT_AT_START=42"))
	if code := p.wait(t, 10*time.Second); code != 42 {
		t.Errorf("exit code %d, want 42", code)
	}
	if got := p.stderr.String(); !strings.Contains(got, "simulated start failure") {
		t.Errorf("stderr %q, want simulated start failure", got)
	}
}

func TestBinaryUsageError(t *testing.T) {
	p := exited(t, binary(t, "python3", false), []string{"-c", "print(1)"}, environ())
	if code := p.wait(t, 10*time.Second); code != 2 {
		t.Errorf("exit code %d, want 2; stderr:\n%s", code, p.stderr)
	}
}

func TestBinaryCrashAfter(t *testing.T) {
	p := startBinary(t, binary(t, "llama-server", false), []string{"-m", "/m.gguf", "--port", "0"}, environ("MODELPORT_SIM_CRASH_AFTER=300ms"))
	if code := p.wait(t, 10*time.Second); code != 3 {
		t.Errorf("exit code %d, want 3", code)
	}
}

// With MODELPORT_SIM_IGNORE_SIGTERM=1, SIGTERM changes nothing: it keeps
// serving until SIGKILL.
func TestBinaryIgnoresSIGTERM(t *testing.T) {
	p := startBinary(t, binary(t, "vllm", false), []string{"serve", "m", "--port", "0"}, environ("MODELPORT_SIM_IGNORE_SIGTERM=1"))
	p.signal(t, syscall.SIGTERM)
	for range 5 {
		time.Sleep(50 * time.Millisecond)
		if status, _ := httpGet(t, p.base+"/health"); status != http.StatusOK {
			t.Fatalf("health %d after SIGTERM, want it still serving", status)
		}
	}
	select {
	case <-p.done:
		t.Fatalf("exited after SIGTERM: %v", p.cmd.ProcessState)
	default:
	}
	p.signal(t, syscall.SIGKILL)
	p.wait(t, 10*time.Second)
	if ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("ended with %v, want killed by SIGKILL", p.cmd.ProcessState)
	}
	if err := p.cmd.Process.Signal(syscall.Signal(0)); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("process still there: %v", err)
	}
}
