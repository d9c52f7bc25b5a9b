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
)

// readmeCommand is one shell command of the README's walk-through, with
// the comment lines just above it and the answer it shows ("# → ...").
type readmeCommand struct {
	text    string   // as written, continuation lines included
	before  []string // comment lines above it, without "# "
	answers string   // the "# → ..." lines below it, joined
}

// walkthrough returns the commands of the ```sh blocks in the README's
// "## Walk-through" section.
func walkthrough(t *testing.T) []readmeCommand {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Walk-through\n")
	if !ok {
		t.Fatal(`README.md has no "## Walk-through" section`)
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
		if strings.Count(joined, "'")%2 == 1 || strings.HasSuffix(strings.TrimSpace(line), `\`) {
			continue
		}
		cmds = append(cmds, readmeCommand{text: joined, before: comments})
		comments, cur, answering = nil, nil, false
	}
	if len(cur) > 0 {
		t.Fatalf("README walk-through: a command never ends: %s", strings.Join(cur, "\n"))
	}
	if len(cmds) < 10 {
		t.Fatalf("README walk-through: found %d commands, want the whole walk-through", len(cmds))
	}
	return cmds
}

// readmePlaceholders are what the README writes in place of values a
// reader gets from an earlier answer: the ID of the object created by a
// POST to the path.
var readmePlaceholders = map[string]string{
	"/api/v1/services": "<service id>",
	"/api/v1/keys":     "<key id>",
}

// exampleAccessName is how the README writes the service's access name; the
// owner in it is the reader's own.
var exampleAccessName = regexp.MustCompile(`u-[0-9a-f]{12}/test`)

// TestREADMEWalkthrough runs the README's walk-through, the commands as
// written (the admin key, the address, and the IDs and access name from
// earlier answers filled in), with bash and curl against a running
// all-in-one platform. Each answer must be a success; where the README
// shows an answer, the fields it names must be there, with the values it
// shows for strings; "Wait for" comments are waited for. A README that
// drifts from the product fails here.
func TestREADMEWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the platform")
	}
	cmds := walkthrough(t)
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash is required: %v", err)
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatalf("curl is required to run the README's commands (%v): install the Debian package curl, or run make deps", err)
	}
	chAddr, chDB := chtest.New(t)
	p, err := startPlatform(context.Background(), testEnv(t, chAddr, chDB), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })

	values := map[string]string{} // placeholder → value
	var prelude []string          // the variable assignments, filled in
	accessName := ""
	for i, c := range cmds {
		text := c.text
		switch {
		case strings.HasPrefix(text, "KEY="):
			prelude = append(prelude, "KEY="+testAdminKey)
			continue
		case strings.HasPrefix(text, "API="):
			if text != "API=http://127.0.0.1:8080" {
				t.Errorf("README: %q, want the address make run prints, API=http://127.0.0.1:8080", text)
			}
			prelude = append(prelude, "API="+p.BaseURL)
			continue
		}
		for placeholder, v := range values {
			text = strings.ReplaceAll(text, placeholder, v)
		}
		if accessName != "" {
			text = exampleAccessName.ReplaceAllString(text, accessName)
		}
		if m := regexp.MustCompile(`<[a-z ]+>`).FindString(text); m != "" {
			t.Fatalf("README command %d uses %s before an answer gives it:\n%s", i, m, c.text)
		}
		script := "set -euo pipefail\n" + strings.Join(prelude, "\n") + "\n" + text

		wait := ""
		for _, b := range c.before {
			if strings.HasPrefix(b, "Wait for ") {
				wait = b
			}
		}
		var out []byte
		run := func() error {
			cmd := exec.Command(bash, "-c", script)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err = cmd.Output()
			if err != nil {
				return fmt.Errorf("%v: %s", err, stderr.Bytes())
			}
			if bytes.HasPrefix(bytes.TrimSpace(out), []byte(`{"error"`)) {
				return fmt.Errorf("an error answer: %s", out)
			}
			if wait != "" {
				if err := matchPairs(wait, out, accessName); err != nil {
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
					AccessName string `json:"access_name"`
				}
				if err := json.Unmarshal(out, &created); err != nil || created.ID == "" {
					return fmt.Errorf("answered %s, want an object with its id", out)
				}
				values[placeholder] = created.ID
				if created.AccessName != "" {
					accessName = created.AccessName
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
				return matchPairs(c.answers, out, accessName)
			})
			continue
		}
		if err := run(); err != nil {
			t.Fatalf("README command:\n%s\n%v", c.text, err)
		}
		if err := learn(); err != nil {
			t.Fatalf("README command:\n%s\n%v", c.text, err)
		}
		if err := matchPairs(c.answers, out, accessName); err != nil {
			t.Fatalf("README command:\n%s\nanswered %s\nunlike the README's answer %s: %v", c.text, out, c.answers, err)
		}
	}
	for _, placeholder := range readmePlaceholders {
		if values[placeholder] == "" {
			t.Errorf("the walk-through never created what %s stands for", placeholder)
		}
	}
}

// isRead reports whether a curl command only reads (a GET), so running it
// again while waiting is harmless.
func isRead(cmd string) bool {
	return !strings.Contains(cmd, " -d ") && !strings.Contains(cmd, " -X ")
}

// readmePair is "key": value in an answer the README shows.
var readmePair = regexp.MustCompile(`"([a-z_]+)":\s*("[^"]*"|-?[0-9]+)?`)

// matchPairs checks an answer against what the README shows of it: every
// key it names is in the answer, and top-level string values it shows are
// the answer's (placeholders such as "<service id>" or "…" aside; the
// example access name is the real one). Numbers are shown for their
// shape, not their value, except where a "Wait for" comment names them.
func matchPairs(shown string, out []byte, accessName string) error {
	if shown == "" {
		return nil
	}
	waiting := strings.HasPrefix(shown, "Wait for ")
	var top map[string]json.RawMessage
	_ = json.Unmarshal(out, &top)
	for _, m := range readmePair.FindAllStringSubmatch(shown, -1) {
		key, value := m[1], m[2]
		if !bytes.Contains(out, []byte(`"`+key+`":`)) {
			return fmt.Errorf("no %q in the answer", key)
		}
		got, ok := top[key]
		if !ok || value == "" || strings.ContainsAny(value, "<…") {
			continue
		}
		if strings.HasPrefix(value, `"`) {
			if accessName != "" {
				value = exampleAccessName.ReplaceAllString(value, accessName)
			}
			if string(got) != value {
				return fmt.Errorf("%s is %s, the README shows %s", key, got, value)
			}
		} else if waiting && string(got) != value {
			return fmt.Errorf("%s is %s, waiting for %s", key, got, value)
		}
	}
	return nil
}
