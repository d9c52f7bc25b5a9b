package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/chtest"
)

// repoRoot is the repository root, seen from this package's directory
// (where go test runs it).
const repoRoot = "../.."

// TestNodeClient runs clients/node/openai.test.mjs, which drives the router
// with the official openai npm package, unchanged, against the all-in-one
// platform with a text, a vision and an image-generation service.
func TestNodeClient(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the platform and Node.js")
	}
	node := nodeForClientTests(t)

	chAddr, chDB := chtest.New(t)
	p, err := startPlatform(context.Background(), testEnv(t, chAddr, chDB), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })

	var created []service
	for _, s := range []struct{ name, model, task string }{
		{"node-text", "qwen2.5-7b-instruct", "text-generation"},
		{"node-vision", "qwen2-vl-7b-instruct", "image-understanding"},
		{"node-image", "stable-diffusion-xl", "image-generation"},
	} {
		var svc service
		if st := call(t, "POST", p.BaseURL+"/api/v1/services", testAdminKey, map[string]any{
			"name": s.name, "base_model": s.model, "task": s.task,
		}, &svc); st != 201 {
			t.Fatalf("create %s (%s, %s): status %d, %+v", s.name, s.model, s.task, st, svc)
		}
		created = append(created, svc)
	}
	for _, svc := range created {
		eventually(t, 30*time.Second, svc.Name+" running", func() error {
			var got service
			if st := call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID, testAdminKey, nil, &got); st != 200 {
				return fmt.Errorf("status %d", st)
			}
			if got.Status != "running" || got.ReadyInstances < 1 {
				return fmt.Errorf("status %s, ready %d/%d", got.Status, got.ReadyInstances, got.Instances)
			}
			return nil
		})
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec", "clients/node/openai.test.mjs")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(),
		"NO_COLOR=1",
		"MODELPORT_BASE_URL="+p.BaseURL+"/v1",
		"MODELPORT_API_KEY="+testAdminKey,
		"MODELPORT_TEXT_MODEL="+created[0].AccessName,
		"MODELPORT_VISION_MODEL="+created[1].AccessName,
		"MODELPORT_IMAGE_MODEL="+created[2].AccessName,
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	t.Logf("node --test clients/node/openai.test.mjs:\n%s", out.Bytes())
	if ctx.Err() != nil {
		t.Fatalf("node --test did not finish within the deadline: %v", err)
	}
	if err != nil {
		t.Fatalf("node --test clients/node/openai.test.mjs: %v (its output is above)", err)
	}
}

// nodeForClientTests returns the node binary that runs clients/node, once
// `npm ci --prefix clients/node` has installed the openai package. Without
// them the test fails, saying what to do.
func nodeForClientTests(t *testing.T) string {
	t.Helper()
	missing := func(format string, args ...any) {
		t.Helper()
		t.Fatalf(format, args...)
	}
	const install = "run `make deps` (or install Node.js 20 or later, then run `npm ci --prefix clients/node` at the repository root)"
	node, err := exec.LookPath("node")
	if err != nil {
		missing("Node.js is required (%v): %s", err, install)
		return ""
	}
	v, err := exec.Command(node, "--version").Output()
	if err != nil {
		missing("%s --version: %v: %s", node, err, install)
		return ""
	}
	major, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(string(v)), "v"), ".")
	if n, err := strconv.Atoi(major); err != nil || n < 20 {
		missing("Node.js 20 or later is required, found %s: %s", bytes.TrimSpace(v), install)
		return ""
	}
	pkg := filepath.Join(repoRoot, "clients", "node", "node_modules", "openai", "package.json")
	if _, err := os.Stat(pkg); errors.Is(err, os.ErrNotExist) {
		missing("the openai package is not installed in clients/node: run `make deps` (or `npm ci --prefix clients/node`) at the repository root")
		return ""
	} else if err != nil {
		t.Fatal(err)
	}
	return node
}
