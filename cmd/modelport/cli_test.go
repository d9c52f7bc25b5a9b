package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/events"
)

// TestCLI drives the modelport binary's client commands against a running
// all-in-one platform, as a user would from a shell: log in, deploy and
// wait, list, show, chat (streamed), scale, manage keys, read usage, follow
// events live and from a time, delete with a confirmation, and the errors
// on the way.
func TestCLI(t *testing.T) {
	chAddr, chDB := chtest.New(t)
	p, err := startPlatform(context.Background(), testEnv(t, chAddr, chDB), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	home := t.TempDir()
	cfgPath := filepath.Join(home, "modelport", "config.json")
	m := &cliRunner{t: t, bin: buildModelport(t), env: []string{
		"HOME=" + home, "XDG_CONFIG_HOME=", "MODELPORT_CONFIG=" + cfgPath,
		"MODELPORT_URL=", "MODELPORT_API_KEY=", "MODELPORT_NATS_URL=",
	}}

	// Nothing works before a login, and the error says what to do.
	if _, stderr := m.fail("", "ls"); !strings.Contains(stderr, "not logged in") || !strings.Contains(stderr, "modelport login --url") {
		t.Errorf("ls before login: %q", stderr)
	}
	if _, stderr := m.fail("", "login", "--url", p.BaseURL, "--key", "mp-not-a-key-0123456789abcdef"); !strings.Contains(stderr, "invalid API key") {
		t.Errorf("login with a wrong key: %q", stderr)
	}
	if _, err := os.Stat(cfgPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused login saved the config: %v", err)
	}
	// The key comes on stdin; the URL may be pasted as printed, with /v1.
	m.ok(testAdminKey+"\n", "login", "--url", p.BaseURL+"/v1")
	fi, err := os.Stat(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("config mode %v, want 0600", fi.Mode().Perm())
	}
	var saved cliConfig
	if b, err := os.ReadFile(cfgPath); err != nil || json.Unmarshal(b, &saved) != nil || saved != (cliConfig{URL: p.BaseURL, Key: testAdminKey}) {
		t.Errorf("saved config %+v (%v), want the URL %s and the key", saved, err, p.BaseURL)
	}

	// Without credentials the server refuses a tail, and the error says
	// which.
	if _, stderr := m.fail("", "events", "tail", "--nats", p.NATSURL); !strings.Contains(stderr, "refused no credentials") || !strings.Contains(stderr, "Authorization Violation") {
		t.Errorf("events tail without credentials: %q", stderr)
	}
	// Follow every event live from here on. The platform logged in to
	// says where its event stream is (it is not on the default port) and
	// hands the admin key the read-only events-reader identity: no flags.
	live := m.start(nil, "events", "tail", "--output", "json")
	live.waitStderr(t, "Following DEPLOY")
	if st, err := os.Stat(access.SeedFile(filepath.Dir(cfgPath), access.EventsReader)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("the events-reader seed the platform handed out: %v, %v; want a file readable by its owner alone", st, err)
	}

	out, _ := m.ok("", "catalog")
	if !strings.HasPrefix(out, "NAME") || !strings.Contains(out, "qwen2.5-7b-instruct") {
		t.Errorf("catalog:\n%s", out)
	}
	var models []struct{ Name string }
	m.okJSON(&models, "catalog", "--output", "json")
	if len(models) == 0 {
		t.Error("catalog --output json: no models")
	}

	out, stderr := m.ok("", "deploy", "clitest", "--model", "qwen2.5-7b-instruct", "--task", "text-generation",
		"--instances", "1", "--billing", "per-token", "--routing", "round-robin", "--wait")
	for _, want := range []string{"Status:", "running", "1/1 ready", "u-"} {
		if !strings.Contains(out, want) {
			t.Errorf("deploy --wait: no %q in\n%s", want, out)
		}
	}
	if !strings.Contains(stderr, "Deploying clitest") || !strings.Contains(stderr, "instances ready") {
		t.Errorf("deploy --wait progress: %q", stderr)
	}

	var list []service
	m.okJSON(&list, "ls", "--output", "json")
	if len(list) != 1 || list[0].Name != "clitest" || list[0].Status != "running" {
		t.Fatalf("ls --output json: %+v", list)
	}
	svc := list[0]
	out, _ = m.ok("", "ls")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2 ||
		!regexp.MustCompile(`^NAME +ACCESS NAME +SERVICE ID +BASE MODEL +TASK +READY +STATUS +BILLING +CREATED$`).MatchString(lines[0]) ||
		!regexp.MustCompile(`^clitest +`+regexp.QuoteMeta(svc.AccessName)+` +`+svc.ID+` +qwen2.5-7b-instruct +text-generation +1/1 +running +per-token `).MatchString(lines[1]) {
		t.Errorf("ls:\n%s", out)
	}
	// get by name, ID and access name shows every field.
	for _, ref := range []string{"clitest", svc.ID, svc.AccessName} {
		out, _ = m.ok("", "get", ref)
		for _, want := range []string{"Name:", "clitest", "Access name:", svc.AccessName, "Service ID:", svc.ID, "Base model:", "qwen2.5-7b-instruct",
			"Engine:", svc.Engine, "Task:", "text-generation", "Instances:", "1/1 ready", "Status:", "running", "Billing method:", "per-token",
			"Routing:", "round-robin", "Created:", "Updated:"} {
			if !strings.Contains(out, want) {
				t.Errorf("get %s: no %q in\n%s", ref, want, out)
			}
		}
	}
	var got service
	m.okJSON(&got, "get", "clitest", "--output", "json")
	if got.ID != svc.ID || got.AccessName != svc.AccessName {
		t.Errorf("get --output json: %+v, want %+v", got, svc)
	}

	// routing shows the policy, and changes it.
	if out, _ = m.ok("", "routing", "clitest"); !strings.Contains(out, "clitest is routed by round-robin") || !strings.Contains(out, "least-outstanding, prefix-affinity, round-robin") {
		t.Errorf("routing: %q", out)
	}
	out, stderr = m.ok("", "routing", "clitest", "prefix-affinity")
	if !strings.Contains(stderr, "Routing clitest by prefix-affinity (was round-robin)") || !regexp.MustCompile(`(?m)^Routing: +prefix-affinity$`).MatchString(out) {
		t.Errorf("routing clitest prefix-affinity: stdout %q, stderr %q", out, stderr)
	}
	var routed struct {
		RoutingPolicy string `json:"routing_policy"`
	}
	if m.okJSON(&routed, "get", svc.ID, "--output", "json"); routed.RoutingPolicy != "prefix-affinity" {
		t.Errorf("after routing: the service says %q", routed.RoutingPolicy)
	}

	// chat streams the answer to stdout and the usage to stderr.
	usageLine := regexp.MustCompile(`usage: \d+ prompt \+ \d+ completion = \d+ tokens`)
	out, stderr = m.ok("", "chat", "clitest", "Say this is a test!", "--temperature", "0.7", "--system", "Be brief.")
	if strings.TrimSpace(out) == "" || !usageLine.MatchString(stderr) {
		t.Errorf("chat: stdout %q, stderr %q", out, stderr)
	}
	out, _ = m.ok("", "chat", svc.AccessName, "Say this is a test!", "--output", "json")
	chunks := strings.Split(strings.TrimSpace(out), "\n")
	for _, c := range chunks {
		var chunk struct{ Object string }
		if err := json.Unmarshal([]byte(c), &chunk); err != nil || chunk.Object != "chat.completion.chunk" {
			t.Errorf("chat --output json: line %q: %v", c, err)
		}
	}
	if len(chunks) < 3 {
		t.Errorf("chat --output json: %d chunks, want the answer streamed in several:\n%s", len(chunks), out)
	}
	out, stderr = m.ok("Say this is a test!", "chat", "clitest", "--no-stream", "--max-tokens", "16")
	if strings.TrimSpace(out) == "" || !usageLine.MatchString(stderr) {
		t.Errorf("chat --no-stream with the prompt on stdin: stdout %q, stderr %q", out, stderr)
	}

	out, _ = m.ok("", "scale", "clitest", "2", "--wait")
	if !strings.Contains(out, "2/2 ready") || !strings.Contains(out, "running") {
		t.Errorf("scale --wait:\n%s", out)
	}

	// A key restricted to the service works until it is revoked.
	var key struct{ ID, Key, Prefix string }
	m.okJSON(&key, "keys", "create", "ci", "--service", "clitest", "--output", "json")
	if !strings.HasPrefix(key.Key, "mp-") || key.ID == "" {
		t.Fatalf("keys create: %+v", key)
	}
	out, _ = m.ok("", "keys", "ls")
	if !regexp.MustCompile(`(?m)^` + key.ID + ` +ci +` + regexp.QuoteMeta(key.Prefix) + `… +clitest `).MatchString(out) {
		t.Errorf("keys ls:\n%s", out)
	}
	if out, _ = m.ok("", "chat", "clitest", "hello from ci", "--key", key.Key); strings.TrimSpace(out) == "" {
		t.Error("chat with the new key: no answer")
	}
	// Only admin keys are told where the event stream is.
	if _, stderr := m.fail("", "events", "tail", "--key", key.Key); !strings.Contains(stderr, "only admin keys") || !strings.Contains(stderr, "--nats") {
		t.Errorf("events tail with an owner's key: %q", stderr)
	}
	if out, _ = m.ok("", "keys", "revoke", "ci"); !strings.Contains(out, "Revoked key ci") {
		t.Errorf("keys revoke: %q", out)
	}
	eventually(t, 10*time.Second, "the revoked key refused", func() error {
		r := m.run("", "get", "clitest", "--key", key.Key)
		if r.code == 0 || !strings.Contains(r.stderr, "invalid API key") || !strings.Contains(r.stderr, "modelport login") {
			return fmt.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
		return nil
	})

	// Billing counts the four answered chats.
	eventually(t, 30*time.Second, "usage of the four chats", func() error {
		var u usageTotals
		m.okJSON(&u, "usage", "clitest", "--output", "json")
		if u.ServiceID != svc.ID || u.Requests != 4 || u.TotalTokens == 0 {
			return fmt.Errorf("usage %+v", u)
		}
		return nil
	})
	out, _ = m.ok("", "usage", "clitest", "--from", "1h")
	if !regexp.MustCompile(`(?m)^Requests: +4$`).MatchString(out) || !strings.Contains(out, svc.ID) {
		t.Errorf("usage:\n%s", out)
	}
	// Grouped by key: the totals, then a row per key; the ci key made one
	// request.
	out, _ = m.ok("", "usage", svc.ID, "--group-by", "api_key")
	if !regexp.MustCompile(`(?m)^Requests: +4$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^API KEY +REQUESTS +PROMPT TOKENS +COMPLETION TOKENS +TOTAL TOKENS `).MatchString(out) ||
		!regexp.MustCompile(`(?m)^`+key.ID+` +1 +\d+ +\d+ +\d+ `).MatchString(out) {
		t.Errorf("usage --group-by api_key:\n%s", out)
	}

	// Errors name the problem.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"get", "no-such-service"}, `service "no-such-service" not found`},
		{[]string{"chat", "no-such-service", "hi"}, `service "no-such-service" not found`},
		{[]string{"deploy", "other", "--model", "no-such-model"}, "param: base_model"},
		{[]string{"deploy", "other"}, "--model is required"},
		{[]string{"scale", "clitest", "two"}, "INSTANCES must be a whole number"},
		{[]string{"routing", "clitest", "sticky"}, "least-outstanding, prefix-affinity, round-robin"},
		{[]string{"routing", "clitest", "prefix-afinity"}, `did you mean "prefix-affinity"`},
		{[]string{"deploy", "other", "--model", "qwen2.5-7b-instruct", "--routing", "random"}, "param: routing_policy"},
		{[]string{"ls", "--output", "yaml"}, "want table or json"},
		{[]string{"events", "tail", "--subject", "nope.>", "--nats", p.NATSURL, "--nkey", access.SeedFile(p.NATSCreds, access.EventsReader)}, "no event stream holds subjects matching nope.>"},
		// Another identity's seed: the server knows it, but not as a reader
		// of every stream.
		{[]string{"events", "tail", "--nats", p.NATSURL, "--nkey", access.SeedFile(p.NATSCreds, access.InferenceWorker)}, "permission denied: NATS identity events-reader may not"},
	} {
		if _, stderr := m.fail("", tc.args...); !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: stderr %q, want %q", tc.args, stderr, tc.want)
		}
	}

	// delete asks for the name; a wrong one changes nothing.
	if _, stderr := m.fail("", "delete", "clitest", "--confirm", "clitset"); !strings.Contains(stderr, "refused") {
		t.Errorf("delete --confirm with a wrong name: %q", stderr)
	}
	if _, stderr := m.fail("clitset\n", "delete", "clitest"); !strings.Contains(stderr, "Type the service name to confirm") || !strings.Contains(stderr, "refused") {
		t.Errorf("delete typing a wrong name: %q", stderr)
	}
	m.okJSON(&got, "get", svc.ID, "--output", "json")
	if got.Status != "running" {
		t.Fatalf("after refused deletes: status %s", got.Status)
	}
	if out, _ = m.ok("clitest\n", "delete", "clitest"); !strings.Contains(out, "Deleted clitest") {
		t.Errorf("delete: %q", out)
	}
	m.okJSON(&got, "get", "clitest", "--output", "json") // found by name while deleting and once deleted
	if got.ID != svc.ID || got.Status != "deleting" && got.Status != "deleted" {
		t.Errorf("after delete: status %s", got.Status)
	}

	// The live tail saw the service's life, each event with its ID in
	// Nats-Msg-Id; interrupted, it exits cleanly.
	eventually(t, 10*time.Second, "events followed live", func() error {
		seen := map[string]bool{}
		for _, line := range strings.Split(live.stdout.String(), "\n") {
			if line == "" {
				continue
			}
			var ev tailedEvent
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				return fmt.Errorf("line %q: %v", line, err)
			}
			var meta struct {
				ID        string `json:"event_id"`
				ServiceID string `json:"service_id"`
			}
			if err := json.Unmarshal(ev.Event, &meta); err != nil {
				return fmt.Errorf("event %s: %v", ev.Event, err)
			}
			if ev.Headers["Nats-Msg-Id"] != meta.ID || ev.Time.IsZero() || ev.Stream == "" {
				return fmt.Errorf("line %q: headers, time or stream wrong", line)
			}
			if meta.ServiceID == svc.ID {
				seen[ev.Subject] = true
			}
		}
		for _, want := range []string{events.SubjectServiceCreatedV1, events.SubjectInstanceReadyV1, events.SubjectRequestCompletedV1,
			events.SubjectServiceScaledV1, events.SubjectServiceDeletedV1} {
			if !seen[want] {
				return fmt.Errorf("no %s for the service; saw %v", want, seen)
			}
		}
		return nil
	})
	live.interrupt(t)

	// Replayed from a time, with a subject filter: only what matches.
	replay := m.start([]string{"MODELPORT_NATS_URL=" + p.NATSURL, "MODELPORT_NATS_NKEY=" + access.SeedFile(p.NATSCreds, access.EventsReader)}, "events", "tail", "--since", "10m", "--subject", "deploy.service.*.v1", "--subject", "usage.>")
	replay.waitStderr(t, "Following DEPLOY (deploy.service.*.v1), USAGE (usage.>)")
	eventually(t, 10*time.Second, "events replayed", func() error {
		out := replay.stdout.String()
		for _, subject := range []string{events.SubjectServiceCreatedV1, events.SubjectServiceScaledV1, events.SubjectServiceDeletedV1, events.SubjectRequestCompletedV1} {
			if !regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  ` + regexp.QuoteMeta(subject) + `  \{.*"service_id":"` + svc.ID + `"`).MatchString(out) {
				return fmt.Errorf("no %s line in\n%s", subject, out)
			}
		}
		if strings.Contains(out, "worker.") || strings.Contains(out, "scale.instance") {
			return fmt.Errorf("events outside the filter:\n%s", out)
		}
		return nil
	})
	replay.interrupt(t)
}

func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"2026-03-01T10:00:00Z", time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)},
		{"90m", now.Add(-90 * time.Minute)},
		{"2026-03-01", time.Date(2026, 3, 1, 0, 0, 0, 0, time.Local)},
	} {
		got, err := parseWhen(tc.in, now)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"yesterday", "-1h", ""} {
		if _, err := parseWhen(bad, now); err == nil {
			t.Errorf("parseWhen(%q): no error", bad)
		}
	}
}

func TestCLIParse(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		min, max int
		wantPos  []string
		wantWait bool
		wantErr  bool
	}{
		{args: []string{"svc", "--wait", "2"}, min: 2, max: 2, wantPos: []string{"svc", "2"}, wantWait: true},
		{args: []string{"--wait", "svc", "2"}, min: 2, max: 2, wantPos: []string{"svc", "2"}, wantWait: true},
		{args: []string{"svc", "--", "--wait"}, min: 2, max: 2, wantPos: []string{"svc", "--wait"}},
		{args: []string{"svc"}, min: 2, max: 2, wantErr: true},
		{args: []string{"svc", "--output", "xml", "2"}, min: 2, max: 2, wantErr: true},
		{args: []string{"svc", "--nope", "2"}, min: 2, max: 2, wantErr: true},
	} {
		t.Run(fmt.Sprint(tc.args), func(t *testing.T) {
			c := &cli{stderr: io.Discard}
			fs := c.flags("test", "", true)
			wait := fs.Bool("wait", false, "")
			pos, err := c.parse(fs, tc.args, tc.min, tc.max)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want an error: %v", err, tc.wantErr)
			}
			if err == nil && (!slices.Equal(pos, tc.wantPos) || *wait != tc.wantWait) {
				t.Errorf("positional %q, wait %v; want %q, %v", pos, *wait, tc.wantPos, tc.wantWait)
			}
		})
	}
}

func TestBaseURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:8080":         "http://127.0.0.1:8080",
		"http://127.0.0.1:8080/":        "http://127.0.0.1:8080",
		"http://127.0.0.1:8080/v1":      "http://127.0.0.1:8080",
		"http://127.0.0.1:8080/api/v1/": "http://127.0.0.1:8080",
		"127.0.0.1:8080":                "http://127.0.0.1:8080",
		"https://models.example.com/v1": "https://models.example.com",
	} {
		if got := baseURL(in); got != want {
			t.Errorf("baseURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// buildModelport builds the modelport binary and returns its path.
func buildModelport(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "modelport")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// cliRunner runs the modelport binary with a private configuration.
type cliRunner struct {
	t   *testing.T
	bin string
	env []string
}

type cliResult struct {
	stdout, stderr string
	code           int
}

// run runs the binary with stdin and returns what it wrote and its exit
// code.
func (m *cliRunner) run(stdin string, args ...string) cliResult {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, m.bin, args...)
	cmd.Env = append(os.Environ(), m.env...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		m.t.Fatalf("modelport %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// ok runs the binary and fails the test unless it exits 0.
func (m *cliRunner) ok(stdin string, args ...string) (stdout, stderr string) {
	m.t.Helper()
	r := m.run(stdin, args...)
	if r.code != 0 {
		m.t.Fatalf("modelport %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout, r.stderr
}

// okJSON runs the binary and decodes its output into out.
func (m *cliRunner) okJSON(out any, args ...string) {
	m.t.Helper()
	stdout, _ := m.ok("", args...)
	if err := json.Unmarshal([]byte(stdout), out); err != nil {
		m.t.Fatalf("modelport %s: %v in\n%s", strings.Join(args, " "), err, stdout)
	}
}

// fail runs the binary and fails the test unless it exits non-zero.
func (m *cliRunner) fail(stdin string, args ...string) (stdout, stderr string) {
	m.t.Helper()
	r := m.run(stdin, args...)
	if r.code == 0 {
		m.t.Errorf("modelport %s: exit 0, want an error\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.stdout, r.stderr)
	}
	return r.stdout, r.stderr
}

// start runs a command that runs until interrupted, with extra
// environment variables.
func (m *cliRunner) start(env []string, args ...string) *cliProc {
	m.t.Helper()
	p := &cliProc{cmd: exec.Command(m.bin, args...), stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Env = slices.Concat(os.Environ(), m.env, env)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	m.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if m.t.Failed() {
			m.t.Logf("--- modelport %s ---\nstdout:\n%s\nstderr:\n%s", strings.Join(p.cmd.Args[1:], " "), p.stdout, p.stderr)
		}
	})
	return p
}

// cliProc is a modelport command that runs until interrupted.
type cliProc struct {
	cmd            *exec.Cmd
	stdout, stderr *lockedBuffer
	done           chan struct{}
	err            error // the exit status, once done is closed
}

// waitStderr waits until the command has said want on stderr.
func (p *cliProc) waitStderr(t *testing.T, want string) {
	t.Helper()
	eventually(t, 15*time.Second, "modelport says "+want, func() error {
		select {
		case <-p.done:
			return fmt.Errorf("exited: %v\n%s", p.err, p.stderr)
		default:
		}
		if !strings.Contains(p.stderr.String(), want) {
			return fmt.Errorf("stderr %q", p.stderr)
		}
		return nil
	})
}

// interrupt sends SIGINT, as Ctrl-C does, and wants a clean exit.
func (p *cliProc) interrupt(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("modelport %s after Ctrl-C: %v\n%s", strings.Join(p.cmd.Args[1:], " "), p.err, p.stderr)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("modelport %s still running 10s after Ctrl-C", strings.Join(p.cmd.Args[1:], " "))
	}
}
