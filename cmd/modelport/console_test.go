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
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/gguftest"
)

// consoleScreenshots are the pictures tests/browser/console.test.mjs
// takes, as <page>-<window width>.png under build/screenshots (ignored by
// git: a test never writes into tracked files); `make screenshots` copies
// them to docs/screenshots, which the README shows.
var consoleScreenshots = []string{
	"signin-1280", "list-1280", "list-390", "deploy-1280", "deploy-390", "detail-1280", "detail-390",
	"playground-chat-1280", "playground-chat-390", "image-generation-1280", "image-understanding-1280",
	"statements-1280", "statements-390",
}

// TestConsole drives the web console in Chromium with playwright-core
// (tests/browser/console.test.mjs) against the all-in-one platform: sign
// in, deploy a text, an image-generation and an image-understanding
// service through the form, watch them reach running live, try each in
// the playground, scale one to 2 and change its routing, and delete
// them, a wrong name refused first; register a model through the Models
// page, deploy it and delete it once unused; then read the month's
// statements and close last month. The browser test saves a screenshot
// of each page but the Models pages.
func TestConsole(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the platform and a browser")
	}
	node, chromium := browserForConsoleTests(t)

	chAddr, chDB := chtest.New(t)
	// A little time per token, so the playground's answer arrives in
	// pieces the browser test can see.
	env := config.Chain(config.Map(map[string]string{"MODELPORT_SIM_ITL": "15ms"}), testEnv(t, chAddr, chDB))
	p, err := startPlatform(context.Background(), env, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })

	// A GGUF file on the model store, for the Models page to register.
	modelFile := filepath.Join(p.ModelDirs[0], "tiny-F16.gguf")
	if err := gguftest.Write(modelFile, gguftest.Tiny()); err != nil {
		t.Fatal(err)
	}

	shots, err := filepath.Abs(filepath.Join(repoRoot, "build", "screenshots"))
	if err != nil {
		t.Fatal(err)
	}
	// Only this run's pictures, so make screenshots copies no stale one.
	if err := os.RemoveAll(shots); err != nil {
		t.Fatal(err)
	}
	started := time.Now().Add(-time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "--test", "--test-reporter=spec", "tests/browser/console.test.mjs")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(),
		"NO_COLOR=1",
		"MODELPORT_CONSOLE_URL="+p.BaseURL,
		"MODELPORT_API_KEY="+testAdminKey,
		"MODELPORT_SCREENSHOTS="+shots,
		"MODELPORT_CHROMIUM="+chromium,
		"MODELPORT_MODEL_FILE="+modelFile,
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	t.Logf("node --test tests/browser/console.test.mjs:\n%s", out.Bytes())
	if ctx.Err() != nil {
		t.Fatalf("the browser test did not finish within the deadline: %v", err)
	}
	if err != nil {
		t.Fatalf("node --test tests/browser/console.test.mjs: %v (its output is above)", err)
	}

	for _, name := range consoleScreenshots {
		path := filepath.Join(shots, name+".png")
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("screenshot %s: %v", name, err)
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) || fi.ModTime().Before(started) {
			t.Errorf("screenshot %s is not a PNG written by this run (modified %s)", name, fi.ModTime())
		}
	}
}

// browserForConsoleTests returns node and Chromium, once `npm ci --prefix
// tests/browser` has installed playwright-core. Without them the test
// fails in CI and skips elsewhere, saying what to do.
func browserForConsoleTests(t *testing.T) (node, chromium string) {
	t.Helper()
	missing := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	const install = "run `make deps` (or install Node.js 20 or later, then run `npm ci --prefix tests/browser` at the repository root)"
	node, err := exec.LookPath("node")
	if err != nil {
		missing("Node.js is required (%v): %s", err, install)
		return "", ""
	}
	v, err := exec.Command(node, "--version").Output()
	major, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimSpace(string(v)), "v"), ".")
	if n, convErr := strconv.Atoi(major); err != nil || convErr != nil || n < 20 {
		missing("Node.js 20 or later is required, found %q (%v): %s", bytes.TrimSpace(v), err, install)
		return "", ""
	}
	pkg := filepath.Join(repoRoot, "tests", "browser", "node_modules", "playwright-core", "package.json")
	if _, err := os.Stat(pkg); errors.Is(err, os.ErrNotExist) {
		missing("playwright-core is not installed in tests/browser: run `make deps` (or `npm ci --prefix tests/browser`) at the repository root")
		return "", ""
	} else if err != nil {
		t.Fatal(err)
	}
	chromium = os.Getenv("MODELPORT_CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := exec.LookPath(chromium); err != nil {
		missing("Chromium is required for the console's browser test (%v): run `make deps` (the Debian package chromium), or set MODELPORT_CHROMIUM", err)
		return "", ""
	}
	if v, err := exec.Command(chromium, "--version").Output(); err != nil || !strings.Contains(string(v), "Chromium") {
		missing("%s --version: %q, %v: want Debian's Chromium", chromium, bytes.TrimSpace(v), err)
		return "", ""
	}
	return node, chromium
}
