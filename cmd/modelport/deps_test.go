package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// depsMachine is a pretend Debian machine for scripts/deps: a copy of the
// script and the lock files it reads, and a PATH of real shell tools
// beside fake id, apt-get, dpkg-query, node, npm and go that record what
// they are asked to do. apt-get "installs" by creating the fake commands
// and package records, as the real one would.
type depsMachine struct {
	t    *testing.T
	repo string // the repository copy
	bin  string // PATH
	log  string // one line per fake call
	env  []string
}

// fakes are the fake commands, as shell scripts. FAKE_* name the
// machine's folders.
var fakes = map[string]string{
	"id": `[ "$1" = -u ] && echo "$FAKE_UID"`,
	"apt-get": `echo "apt-get $*" >>"$FAKE_LOG"
[ "$1" = install ] || exit 0
[ -n "$FAKE_APT_FAIL" ] && { echo "E: Unable to locate package $FAKE_APT_FAIL" >&2; exit 100; }
for p in "$@"; do
  case "$p" in
  -*|install) ;;
  nodejs) printf '#!/bin/sh\necho v20.11.1\n' >"$FAKE_BIN/node"; chmod +x "$FAKE_BIN/node" ;;
  chromium) printf '#!/bin/sh\n' >"$MODELPORT_CHROMIUM"; chmod +x "$MODELPORT_CHROMIUM" ;;
  clickhouse-server|clickhouse-client|curl|g++) printf '#!/bin/sh\n' >"$FAKE_BIN/$p"; chmod +x "$FAKE_BIN/$p" ;;
  npm) cp "$FAKE_BIN/.npm" "$FAKE_BIN/npm" ;;
  esac
  touch "$FAKE_DPKG/$p"
done`,
	"dpkg-query": `for last; do :; done
[ -e "$FAKE_DPKG/$last" ] && printf 'install ok installed' && exit 0
exit 1`,
	"go": `[ "$1 $2" = "env GOVERSION" ] && echo go1.26.0`,
	// npm is installed as .npm and copied into place by apt-get.
	".npm": `#!/bin/sh
echo "npm $*" >>"$FAKE_LOG"
while [ $# -gt 0 ]; do [ "$1" = --prefix ] && mkdir -p "$2/node_modules"; shift; done`,
}

func newDepsMachine(t *testing.T) *depsMachine {
	t.Helper()
	root := t.TempDir()
	m := &depsMachine{t: t, repo: filepath.Join(root, "repo"), bin: filepath.Join(root, "bin"), log: filepath.Join(root, "log")}
	dpkg := filepath.Join(root, "dpkg")
	for _, dir := range []string{filepath.Join(m.repo, "scripts"), filepath.Join(m.repo, "clients", "node"), filepath.Join(m.repo, "tests", "browser"), m.bin, dpkg} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"scripts/deps", "clients/node/package-lock.json", "tests/browser/package-lock.json"} {
		b, err := os.ReadFile(filepath.Join(repoRoot, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(m.repo, f), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tool := range []string{"bash", "sh", "env", "sed", "cmp", "cp", "mktemp", "tail", "rm", "cat", "dirname", "mkdir", "touch", "chmod", "printf"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		if err := os.Symlink(p, filepath.Join(m.bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	for name, script := range fakes {
		if !strings.HasPrefix(script, "#!") {
			script = "#!/bin/sh\n" + script
		}
		if err := os.WriteFile(filepath.Join(m.bin, name), []byte(script+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	m.env = []string{"PATH=" + m.bin, "HOME=" + root, "FAKE_LOG=" + m.log, "FAKE_BIN=" + m.bin, "FAKE_DPKG=" + dpkg,
		"MODELPORT_CHROMIUM=" + filepath.Join(root, "chromium"), "FAKE_UID=0"}
	return m
}

// run runs scripts/deps with args and extra environment, and returns its
// exit status, its output and the fake calls it made.
func (m *depsMachine) run(env []string, args ...string) (code int, out string, calls []string) {
	m.t.Helper()
	_ = os.Remove(m.log)
	cmd := exec.Command(filepath.Join(m.repo, "scripts", "deps"), args...)
	cmd.Env = append(append([]string{}, m.env...), env...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	if exit, ok := err.(*exec.ExitError); ok {
		code = exit.ExitCode()
	} else if err != nil {
		m.t.Fatalf("scripts/deps: %v", err)
	}
	if log, err := os.ReadFile(m.log); err == nil {
		calls = strings.Split(strings.TrimSpace(string(log)), "\n")
	}
	return code, b.String(), calls
}

const allPackages = "clickhouse-server clickhouse-client nodejs npm chromium curl g++ nlohmann-json3-dev libstb-dev"

// TestDepsScript: make deps (scripts/deps) on a machine that lacks
// everything installs it all with one apt-get update and one install,
// says so, installs the npm modules, and then does nothing, quietly; not
// root, or refused by apt-get, it says the exact command to run.
func TestDepsScript(t *testing.T) {
	t.Run("not root", func(t *testing.T) {
		m := newDepsMachine(t)
		code, out, calls := m.run([]string{"FAKE_UID=1000"})
		if code == 0 || len(calls) != 0 {
			t.Errorf("exit %d, calls %q: want a failure and no apt-get", code, calls)
		}
		for _, want := range []string{"missing: " + allPackages, "needs root", "  apt-get update && apt-get install -y --no-install-recommends " + allPackages,
			"sudo sh -c 'apt-get update && apt-get install -y --no-install-recommends " + allPackages + "'"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("root, everything missing, then nothing", func(t *testing.T) {
		m := newDepsMachine(t)
		code, out, calls := m.run(nil)
		if code != 0 {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		want := []string{
			"apt-get update -q",
			"apt-get install -y -q --no-install-recommends " + allPackages,
			"npm ci --prefix clients/node --no-audit --no-fund --loglevel=error",
			"npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error",
		}
		if strings.Join(calls, "\n") != strings.Join(want, "\n") {
			t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(calls, "\n"), strings.Join(want, "\n"))
		}
		for _, say := range []string{"installing the Debian packages: " + allPackages, "installing the npm modules of clients/node", "installing the npm modules of tests/browser"} {
			if !strings.Contains(out, say) {
				t.Errorf("output lacks %q:\n%s", say, out)
			}
		}

		code, out, calls = m.run(nil)
		if code != 0 || out != "" || len(calls) != 0 {
			t.Errorf("second run: exit %d, output %q, calls %q; want nothing at all", code, out, calls)
		}

		// A changed lock file: npm ci there, and only there.
		lock := filepath.Join(m.repo, "tests", "browser", "package-lock.json")
		if err := os.WriteFile(lock, []byte(`{"lockfileVersion":3,"changed":true}`), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, calls = m.run(nil)
		if code != 0 || len(calls) != 1 || !strings.HasPrefix(calls[0], "npm ci --prefix tests/browser ") {
			t.Errorf("after a lock change: exit %d, calls %q; want one npm ci in tests/browser", code, calls)
		}
	})

	t.Run("root, apt-get refuses", func(t *testing.T) {
		m := newDepsMachine(t)
		code, out, _ := m.run([]string{"FAKE_APT_FAIL=chromium"})
		if code == 0 {
			t.Fatalf("exit 0, want a failure:\n%s", out)
		}
		for _, want := range []string{"Unable to locate package chromium", "apt-get failed", "  apt-get update && apt-get install -y --no-install-recommends " + allPackages} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("Node.js too old", func(t *testing.T) {
		m := newDepsMachine(t)
		if err := os.WriteFile(filepath.Join(m.bin, "node"), []byte("#!/bin/sh\necho v18.19.0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		code, out, _ := m.run(nil)
		if code == 0 || !strings.Contains(out, "Node.js 20 or later is needed, found v18.19.0") {
			t.Errorf("exit %d, output:\n%s\nwant a failure naming the Node.js version", code, out)
		}
	})

	t.Run("make run: ClickHouse only, and never fatal", func(t *testing.T) {
		m := newDepsMachine(t)
		code, out, calls := m.run([]string{"FAKE_UID=1000"}, "run")
		if code != 0 || len(calls) != 0 || !strings.Contains(out, "apt-get install -y --no-install-recommends clickhouse-server clickhouse-client\n") ||
			!strings.Contains(out, "billing waits") {
			t.Errorf("not root: exit %d, calls %q, output:\n%s\nwant success, the command for ClickHouse alone, and a note", code, calls, out)
		}
		code, out, calls = m.run([]string{"MODELPORT_CLICKHOUSE_INSTALL=0"}, "run")
		if code != 0 || len(calls) != 0 || !strings.Contains(out, "MODELPORT_CLICKHOUSE_INSTALL=0") {
			t.Errorf("install forbidden: exit %d, calls %q, output:\n%s", code, calls, out)
		}
		code, out, calls = m.run(nil, "run")
		if code != 0 || len(calls) != 2 || calls[1] != "apt-get install -y -q --no-install-recommends clickhouse-server clickhouse-client" {
			t.Errorf("root: exit %d, calls %q, output:\n%s", code, calls, out)
		}
	})
}
