package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, ...
	args string
}

// readDockerfile returns a Dockerfile's instructions, split into stages
// at each FROM.
func readDockerfile(t *testing.T, path string) [][]instruction {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stages [][]instruction
	var line strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		text := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(text, "#") || (text == "" && line.Len() == 0) {
			continue
		}
		if cont, ok := strings.CutSuffix(text, `\`); ok {
			line.WriteString(cont + " ")
			continue
		}
		line.WriteString(text)
		cmd, args, _ := strings.Cut(line.String(), " ")
		line.Reset()
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("%s: %s before the first FROM", path, in.cmd)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages
}

func find(stage []instruction, cmd string) []string {
	var out []string
	for _, in := range stage {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

// dockerfiles are the images, by Dockerfile, with the service each runs
// and the base image its final stage must start from.
var dockerfiles = []struct {
	path, svc, base string
}{
	{"services/deployer/Dockerfile", "deployer", "gcr.io/distroless/static-debian12:nonroot"},
	{"services/scaler/Dockerfile", "scaler", "gcr.io/distroless/static-debian12:nonroot"},
	{"services/router/Dockerfile", "router", "gcr.io/distroless/static-debian12:nonroot"},
	{"services/billing/Dockerfile", "billing", "gcr.io/distroless/static-debian12:nonroot"},
	{"services/inference-worker/Dockerfile", "inference-worker", "gcr.io/distroless/static-debian12:nonroot"},
	// vLLM brings Python and CUDA: the base image is the engine's own.
	{"services/inference-worker/Dockerfile.vllm", "inference-worker", "vllm/vllm-openai:"},
}

// TestDockerfiles checks each image's Dockerfile: a Go build stage that
// compiles a static binary of the service and the health check, and a
// final stage on a small base that runs it as a non-root user.
func TestDockerfiles(t *testing.T) {
	all, err := filepath.Glob(filepath.Join(repoRoot, "services", "*", "Dockerfile*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(dockerfiles) {
		t.Errorf("Dockerfiles %v, want the %d this test knows", all, len(dockerfiles))
	}
	for _, df := range dockerfiles {
		t.Run(df.path, func(t *testing.T) {
			stages := readDockerfile(t, filepath.Join(repoRoot, df.path))
			if len(stages) < 2 {
				t.Fatalf("%d stages, want a build stage and a final one", len(stages))
			}
			build, final := stages[0], stages[len(stages)-1]
			if from := build[0].args; !strings.HasPrefix(from, "--platform=$BUILDPLATFORM golang:1.26") || !strings.HasSuffix(from, " AS build") {
				t.Errorf("build stage FROM %s, want golang:1.26 on the build platform, AS build", from)
			}
			runs := strings.Join(find(build, "RUN"), "\n")
			for _, want := range []string{"CGO_ENABLED=0", "GOOS=$TARGETOS GOARCH=$TARGETARCH", "go build -trimpath",
				"./services/" + df.svc + "/cmd/" + df.svc, "./deploy/healthcheck"} {
				if !strings.Contains(runs, want) {
					t.Errorf("build stage does not run %q", want)
				}
			}

			if from := final[0].args; !strings.HasPrefix(from, df.base) {
				t.Errorf("final stage FROM %s, want %s", from, df.base)
			}
			users := find(final, "USER")
			if len(users) == 0 {
				t.Fatal("final stage sets no USER: it would run as root")
			}
			user, group, _ := strings.Cut(users[len(users)-1], ":")
			uid, err := strconv.Atoi(user)
			if err != nil || uid == 0 {
				t.Errorf("USER %s: want a numeric non-root user (Kubernetes checks runAsNonRoot by number)", users[len(users)-1])
			}
			if gid, err := strconv.Atoi(group); group != "" && (err != nil || gid == 0) {
				t.Errorf("USER %s: want a numeric non-root group", users[len(users)-1])
			}
			copies := strings.Join(find(final, "COPY"), "\n")
			for _, bin := range []string{"/out/" + df.svc, "/out/healthcheck"} {
				if !strings.Contains(copies, "--from=build "+bin) && !regexp.MustCompile(`--from=build .*`+regexp.QuoteMeta(bin)+`\b`).MatchString(copies) {
					t.Errorf("final stage does not copy %s from the build stage", bin)
				}
			}
			if !strings.Contains(copies, "/usr/local/bin/") {
				t.Errorf("final stage copies to %q, want /usr/local/bin/", copies)
			}
			if got := find(final, "ENTRYPOINT"); len(got) != 1 || got[0] != `["/usr/local/bin/`+df.svc+`"]` {
				t.Errorf("ENTRYPOINT %v, want [\"/usr/local/bin/%s\"]", got, df.svc)
			}
			if got := find(final, "HEALTHCHECK"); len(got) != 1 || !strings.HasSuffix(got[0], `CMD ["/usr/local/bin/healthcheck"]`) {
				t.Errorf("HEALTHCHECK %v, want the healthcheck binary", got)
			}
			env := strings.Join(find(final, "ENV"), " ")
			if !strings.Contains(env, "MODELPORT_HTTP_ADDR=:8080") {
				t.Errorf("ENV %q does not listen on :8080 on every interface", env)
			}
			if got := find(final, "EXPOSE"); len(got) != 1 || !strings.HasPrefix(got[0], "8080") {
				t.Errorf("EXPOSE %v, want 8080 first", got)
			}
			if df.svc == "inference-worker" {
				for _, want := range []string{"MODELPORT_WORKER_LISTEN_HOST=0.0.0.0", "MODELPORT_WORKER_PORTS=9100-9131"} {
					if !strings.Contains(env, want) {
						t.Errorf("ENV %q lacks %s", env, want)
					}
				}
			}
		})
	}
}

// goPackage is the part of `go list -json` this test reads.
type goPackage struct {
	Dir        string
	ImportPath string
	Standard   bool
	Module     *struct {
		Path  string
		Dir   string
		Main  bool
		GoMod string
	}
	GoFiles, CgoFiles, EmbedFiles, OtherFiles []string
}

// TestDockerignore checks that .dockerignore leaves in the build context
// every file an image build reads, as the Go tool lists them: go.work and
// its sum, each workspace module's go.mod and go.sum, and the Go and
// embedded files of every workspace package the binaries import. And that
// it keeps secrets, tests and the deployment files out.
func TestDockerignore(t *testing.T) {
	f, err := os.Open(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	patterns, err := ignorefile.ReadAll(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	excluded := func(rel string) bool {
		t.Helper()
		ok, err := pm.MatchesOrParentMatches(filepath.ToSlash(rel))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}

	args := []string{"list", "-deps", "-json"}
	for _, s := range services {
		args = append(args, "./services/"+s+"/cmd/"+s)
	}
	args = append(args, "./deploy/healthcheck")
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	// The images build in the workspace, whatever this test runs in.
	cmd.Env = append(os.Environ(), "GOWORK="+filepath.Join(root, "go.work"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	needed := map[string]bool{"go.work": true, "go.work.sum": true}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p goPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if p.Standard || p.Module == nil || !p.Module.Main {
			continue // the standard library, or a module the build downloads
		}
		needed[p.Module.GoMod] = true
		if sum := strings.TrimSuffix(p.Module.GoMod, ".mod") + ".sum"; exists(sum) {
			needed[sum] = true
		}
		for _, list := range [][]string{p.GoFiles, p.CgoFiles, p.EmbedFiles, p.OtherFiles} {
			for _, name := range list {
				needed[filepath.Join(p.Dir, name)] = true
			}
		}
	}
	// go.work lists every module; the Go tool reads each one's go.mod.
	work, err := os.ReadFile(filepath.Join(root, "go.work"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^\s*(\./[^\s)]+)\s*$`).FindAllStringSubmatch(string(work), -1) {
		needed[filepath.Join(root, m[1], "go.mod")] = true
	}
	if len(needed) < 20 {
		t.Fatalf("only %d files needed? %v", len(needed), needed)
	}
	for path := range needed {
		rel := path
		if filepath.IsAbs(path) {
			if rel, err = filepath.Rel(root, path); err != nil {
				t.Fatal(err)
			}
		}
		if excluded(rel) {
			t.Errorf(".dockerignore leaves out %s, which the image builds read", rel)
		}
	}
	for _, rel := range []string{".env", ".git/config", "deploy/compose/.env.example", "deploy/k8s/base/kustomization.yaml",
		"deploy/healthcheck/main_test.go", "services/router/internal/gateway/gateway_test.go", "docker-compose.yml", "bin/modelport"} {
		if !excluded(rel) {
			t.Errorf(".dockerignore lets %s into the build context", rel)
		}
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
