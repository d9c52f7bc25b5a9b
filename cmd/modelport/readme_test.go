package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/enginetest"
)

// readmeCommand is one shell command of a README section, with the
// comment lines just above it and the answer it shows ("# → ...").
type readmeCommand struct {
	text    string   // as written, continuation lines included
	before  []string // comment lines above it, without "# "
	answers string   // the "# → ..." lines below it, joined
}

// The README sections whose commands TestREADMEWalkthrough runs.
const (
	readmeWalkthrough = "Walk-through"
	readmeRealEngine  = "Your own model on a real engine, without a GPU"
)

// readmeSection returns the commands of the ```sh blocks in the README's
// "## <heading>" section.
func readmeSection(t *testing.T, heading string) []readmeCommand {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## "+heading+"\n")
	if !ok {
		t.Fatalf("README.md has no %q section", "## "+heading)
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	var cmds []readmeCommand
	var comments []string
	var cur []string
	inBlock, answering := false, false
	for _, line := range strings.Split(section, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case !inBlock:
			inBlock = trimmed == "```sh"
			continue
		case trimmed == "```":
			inBlock = false
			continue
		}
		if len(cur) > 0 { // a command continues: a trailing \ or an open quote
			cur = append(cur, line)
		} else if strings.HasPrefix(trimmed, "#") {
			text := strings.TrimSpace(strings.TrimPrefix(trimmed, "#"))
			if after, ok := strings.CutPrefix(text, "→"); ok && len(cmds) > 0 {
				answering = true
				cmds[len(cmds)-1].answers += strings.TrimSpace(after)
			} else if answering && len(cmds) > 0 && len(comments) == 0 && strings.HasPrefix(line, "#  ") {
				cmds[len(cmds)-1].answers += text // an answer's continuation
			} else {
				answering = false
				comments = append(comments, text)
			}
			continue
		} else if trimmed == "" {
			comments, answering = nil, false
			continue
		} else {
			cur = []string{line}
		}
		joined := strings.Join(cur, "\n")
		if openQuote(joined) || strings.HasSuffix(strings.TrimSpace(line), `\`) {
			continue
		}
		cmds = append(cmds, readmeCommand{text: joined, before: comments})
		comments, cur, answering = nil, nil, false
	}
	if len(cur) > 0 {
		t.Fatalf("README %s: a command never ends: %s", heading, strings.Join(cur, "\n"))
	}
	return cmds
}

// openQuote reports whether a shell command ends inside a quoted string,
// so that it continues on the next line: single quotes take everything
// literally, double quotes all but an escaped double quote.
func openQuote(cmd string) bool {
	var quote rune
	escaped := false
	for _, r := range cmd {
		switch {
		case escaped:
			escaped = false
		case quote == '\'':
			if r == '\'' {
				quote = 0
			}
		case r == '\\':
			escaped = true
		case quote == '"':
			if r == '"' {
				quote = 0
			}
		case r == '\'' || r == '"':
			quote = r
		}
	}
	return quote != 0
}

// readmePlaceholders are what the README writes in place of values a
// reader gets from an earlier answer: the ID of the object created by a
// POST to the path.
var readmePlaceholders = map[string]string{
	"/api/v1/services": "<service id>",
	"/api/v1/keys":     "<key id>",
}

// exampleAccessName is how the README writes a service's access name,
// u-<owner>/<service name>; the owner in it is the reader's own.
var exampleAccessName = regexp.MustCompile(`u-[0-9a-f]{12}/([a-z0-9-]+)`)

// makeRun is the README's line that starts the platform, with the
// settings it is started with.
var makeRun = regexp.MustCompile(`^((?:[A-Z][A-Z0-9_]*=\S*\s+)*)make run$`)

// TestREADMEWalkthrough runs the README's walk-through and its section on
// running your own model on a real engine, the commands as written (the
// admin key, the address, and the IDs and access names from earlier
// answers filled in), with bash and curl against one running all-in-one
// platform that may run Ollama. Each answer must be a success; where the
// README shows an answer, the fields it names must be there, with the
// values it shows for strings; "Wait for" comments are waited for. A
// README that drifts from the product fails here.
//
// The test stands in for the `make …` lines, which need no test of
// theirs: for `make build engines` it builds bin/modelport and links the
// engine beside it in a folder of its own, where the commands run, and
// for `make run` it starts the platform in-process, as the other tests
// do, with the settings that line gives, its data folder in that same
// folder.
func TestREADMEWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the platform and a real engine")
	}
	walk := readmeSection(t, readmeWalkthrough)
	if len(walk) < 10 {
		t.Fatalf("README walk-through: found %d commands, want the whole walk-through", len(walk))
	}
	engine := readmeSection(t, readmeRealEngine)
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash is required: %v", err)
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatalf("curl is required to run the README's commands (%v): install the Debian package curl, or run make deps", err)
	}

	// What make build engines makes: bin/modelport with the engine
	// beside it.
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"modelport": buildModelport(t), "ollama": enginetest.Ollama(t)} {
		if err := os.Symlink(target, filepath.Join(dir, "bin", name)); err != nil {
			t.Fatal(err)
		}
	}
	// What make run starts, with the settings of the README's line.
	settings := map[string]string{
		"MODELPORT_DATA_DIR": filepath.Join(dir, "data"),
		// bin/modelport up finds the engine beside itself; the platform
		// of this test runs in the test binary.
		"MODELPORT_WORKER_ENGINE_PATH": filepath.Join(dir, "bin"),
		"MODELPORT_WORKER_CPU_THREADS": "1", // test machines are busy
	}
	runs := 0
	for _, c := range engine {
		m := makeRun.FindStringSubmatch(c.text)
		if m == nil {
			continue
		}
		runs++
		for _, kv := range strings.Fields(m[1]) {
			k, v, _ := strings.Cut(kv, "=")
			settings[k] = v
		}
	}
	if runs != 1 {
		t.Fatalf("README %s: %d `make run` lines, want the one that starts the platform with a real engine", readmeRealEngine, runs)
	}
	ollamaStore(t)
	chAddr, chDB := chtest.New(t)
	p, err := startPlatform(context.Background(), config.Chain(config.Map(settings), testEnv(t, chAddr, chDB)), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	if want := filepath.Join(dir, "data", "models"); len(p.ModelDirs) != 1 || p.ModelDirs[0] != want {
		t.Fatalf("model store %v, want %s, where the README puts the model", p.ModelDirs, want)
	}

	for _, section := range []struct {
		heading string
		cmds    []readmeCommand
	}{{readmeWalkthrough, walk}, {readmeRealEngine, engine}} {
		t.Run(section.heading, func(t *testing.T) {
			r := &readmeRun{t: t, bash: bash, dir: dir, base: p.BaseURL, values: map[string]string{}, accessNames: map[string]string{}}
			r.run(section.cmds)
		})
	}
}

// readmeRun runs the commands of one README section in order, in dir,
// against the platform at base.
type readmeRun struct {
	t           *testing.T
	bash, dir   string
	base        string
	values      map[string]string // placeholder → value
	accessNames map[string]string // service name → access name
	prelude     []string          // the variable assignments, filled in
}

func (r *readmeRun) run(cmds []readmeCommand) {
	t := r.t
	used := map[string]bool{}
	for i, c := range cmds {
		text := c.text
		switch {
		case strings.HasPrefix(text, "KEY="):
			r.prelude = append(r.prelude, "KEY="+testAdminKey)
			continue
		case strings.HasPrefix(text, "API="):
			if text != "API=http://127.0.0.1:8080" {
				t.Errorf("README: %q, want the address make run prints, API=http://127.0.0.1:8080", text)
			}
			r.prelude = append(r.prelude, "API="+r.base)
			continue
		case strings.HasPrefix(text, "make ") || makeRun.MatchString(text):
			continue // the test has done what they do
		}
		for _, placeholder := range readmePlaceholders {
			if strings.Contains(text, placeholder) {
				used[placeholder] = true
			}
		}
		text = r.fill(text)
		if m := regexp.MustCompile(`<[a-z ]+>`).FindString(text); m != "" {
			t.Fatalf("README command %d uses %s before an answer gives it:\n%s", i, m, c.text)
		}
		script := "set -euo pipefail\n" + strings.Join(r.prelude, "\n") + "\n" + text

		wait := ""
		for _, b := range c.before {
			if strings.HasPrefix(b, "Wait for ") {
				wait = b
			}
		}
		var out []byte
		run := func() error {
			cmd := exec.Command(r.bash, "-c", script)
			cmd.Dir = r.dir
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			var err error
			out, err = cmd.Output()
			if err != nil {
				return fmt.Errorf("%v: %s", err, stderr.Bytes())
			}
			if bytes.HasPrefix(bytes.TrimSpace(out), []byte(`{"error"`)) {
				return fmt.Errorf("an error answer: %s", out)
			}
			if wait != "" {
				if err := matchPairs(wait, out, r.fill); err != nil {
					return err
				}
			}
			return nil
		}
		// An answer that creates something gives the ID later commands
		// use, and a service its access name.
		learn := func() error {
			for path, placeholder := range readmePlaceholders {
				if !strings.Contains(text, "$API"+path+" ") || isRead(text) {
					continue
				}
				var created struct {
					ID         string `json:"id"`
					Name       string `json:"name"`
					AccessName string `json:"access_name"`
				}
				if err := json.Unmarshal(out, &created); err != nil || created.ID == "" {
					return fmt.Errorf("answered %s, want an object with its id", out)
				}
				r.values[placeholder] = created.ID
				if created.AccessName != "" {
					r.accessNames[created.Name] = created.AccessName
				}
			}
			return nil
		}
		if wait != "" || isRead(text) {
			// The platform works in the background: deploying, billing.
			eventually(t, 90*time.Second, fmt.Sprintf("README command %q", c.text), func() error {
				if err := run(); err != nil {
					return err
				}
				return matchPairs(c.answers, out, r.fill)
			})
			continue
		}
		if err := run(); err != nil {
			t.Fatalf("README command:\n%s\n%v", c.text, err)
		}
		if err := learn(); err != nil {
			t.Fatalf("README command:\n%s\n%v", c.text, err)
		}
		if err := matchPairs(c.answers, out, r.fill); err != nil {
			t.Fatalf("README command:\n%s\nanswered %s\nunlike the README's answer %s: %v", c.text, out, c.answers, err)
		}
	}
	for placeholder := range used {
		if r.values[placeholder] == "" {
			t.Errorf("the README's section never created what %s stands for", placeholder)
		}
	}
}

// fill puts the values learned from earlier answers in place of the
// README's placeholders and example access names.
func (r *readmeRun) fill(s string) string {
	for placeholder, v := range r.values {
		s = strings.ReplaceAll(s, placeholder, v)
	}
	return exampleAccessName.ReplaceAllStringFunc(s, func(example string) string {
		if real, ok := r.accessNames[exampleAccessName.FindStringSubmatch(example)[1]]; ok {
			return real
		}
		return example
	})
}

// isRead reports whether a command only reads (curl with a GET), so
// running it again while waiting is harmless.
func isRead(cmd string) bool {
	return strings.HasPrefix(cmd, "curl ") && !strings.Contains(cmd, " -d ") && !strings.Contains(cmd, " -X ")
}

// readmePair is "key": value in an answer the README shows.
var readmePair = regexp.MustCompile(`"([a-z_]+)":\s*("[^"]*"|-?[0-9]+)?`)

// matchPairs checks an answer against what the README shows of it: every
// key it names is in the answer, and the string values it shows are the
// answer's (placeholders such as "<service id>" or "…" aside; fill puts
// the real access names in place of the example ones). A key at the top
// level of the answer is compared there; one inside it, with any of its
// values at any depth. Numbers are shown for their shape, not their
// value, except where a "Wait for" comment names them.
func matchPairs(shown string, out []byte, fill func(string) string) error {
	if shown == "" {
		return nil
	}
	waiting := strings.HasPrefix(shown, "Wait for ")
	var answer any
	_ = json.Unmarshal(out, &answer)
	for _, m := range readmePair.FindAllStringSubmatch(shown, -1) {
		key, value := m[1], m[2]
		if !bytes.Contains(out, []byte(`"`+key+`":`)) {
			return fmt.Errorf("no %q in the answer", key)
		}
		if value == "" || strings.ContainsAny(value, "<…") || !strings.HasPrefix(value, `"`) && !waiting {
			continue
		}
		value = fill(value)
		got := valuesOf(answer, key)
		found := false
		for _, v := range got {
			b, _ := json.Marshal(v)
			found = found || string(b) == value
		}
		if !found {
			return fmt.Errorf("%s is %s, the README shows %s", key, got, value)
		}
	}
	return nil
}

// valuesOf returns the value of key at the top level of v, an object
// decoded from JSON, or else every value of key deeper inside it.
func valuesOf(v any, key string) []any {
	if obj, ok := v.(map[string]any); ok {
		if top, ok := obj[key]; ok {
			return []any{top}
		}
	}
	var found []any
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if k == key {
					found = append(found, e)
				}
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(v)
	return found
}
