package supervisor_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modelport/modelport/services/inference-worker/internal/supervisor"
)

// fast keeps the tests quick: short backoffs, grace and timeouts.
var fast = supervisor.Policy{
	StartTimeout: 10 * time.Second,
	Backoff:      10 * time.Millisecond,
	MaxBackoff:   40 * time.Millisecond,
	MaxCrashes:   1000,
	CrashWindow:  time.Minute,
	StopGrace:    5 * time.Second,
	PollInterval: 20 * time.Millisecond,
}

// health is a health endpoint whose answer the test sets.
type health struct {
	srv    *httptest.Server
	status atomic.Int32
	polls  atomic.Int64
}

func newHealth(t *testing.T, status int) *health {
	h := &health{}
	h.status.Store(int32(status))
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.polls.Add(1)
		w.WriteHeader(int(h.status.Load()))
	}))
	t.Cleanup(h.srv.Close)
	return h
}

// recorder keeps every status a supervisor reports.
type recorder struct {
	mu  sync.Mutex
	all []supervisor.Status
}

func (r *recorder) notify(st supervisor.Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.all = append(r.all, st)
}

func (r *recorder) statuses() []supervisor.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]supervisor.Status(nil), r.all...)
}

// waitFor polls until the recorder holds a status for which ok holds.
func (r *recorder) waitFor(t *testing.T, what string, ok func(supervisor.Status) bool) supervisor.Status {
	t.Helper()
	var found supervisor.Status
	eventually(t, what, func() bool {
		for _, st := range r.statuses() {
			if ok(st) {
				found = st
				return true
			}
		}
		return false
	})
	return found
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// groupGone reports whether no process of the group is left.
func groupGone(pgid int) bool {
	return errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}

func sh(script string, h *health) supervisor.Command {
	return supervisor.Command{Name: "/bin/sh", Args: []string{"-c", script}, HealthURL: h.srv.URL + "/health"}
}

func start(t *testing.T, cmd supervisor.Command, p supervisor.Policy, log *slog.Logger) (*supervisor.Supervisor, *recorder) {
	t.Helper()
	rec := &recorder{}
	s := supervisor.Start(cmd, p, log, rec.notify)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
	})
	return s, rec
}

func isState(state supervisor.State) func(supervisor.Status) bool {
	return func(st supervisor.Status) bool { return st.State == state }
}

func TestReadyAndStop(t *testing.T) {
	h := newHealth(t, http.StatusServiceUnavailable)
	s, rec := start(t, sh("echo loading; exec sleep 60", h), fast, nil)
	eventually(t, "the health check is polled", func() bool { return h.polls.Load() >= 2 })
	if got := s.Status().State; got != supervisor.Starting {
		t.Fatalf("state = %s while health answers 503, want starting", got)
	}
	h.status.Store(http.StatusOK)
	rec.waitFor(t, "ready", isState(supervisor.Ready))
	pgid := s.Pgid()
	if pgid == 0 || groupGone(pgid) {
		t.Fatalf("pgid %d: no running process group", pgid)
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if !groupGone(pgid) {
		t.Error("a process of the group outlived Stop")
	}
	got := rec.statuses()
	want := []supervisor.State{supervisor.Starting, supervisor.Ready, supervisor.Stopped}
	if len(got) != len(want) {
		t.Fatalf("statuses %+v, want states %v", got, want)
	}
	for i := range want {
		if got[i].State != want[i] || got[i].Restarts != 0 {
			t.Errorf("status %d = %+v, want %s with no restarts", i, got[i], want[i])
		}
	}
	if tail := s.LogTail(); !strings.Contains(tail, "loading\n") {
		t.Errorf("log tail %q, want the output", tail)
	}
	select {
	case <-s.Done():
	default:
		t.Error("Done not closed after Stop")
	}
	// Stopping again is a no-op.
	if err := s.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestStopKillsWhatIgnoresSIGTERM(t *testing.T) {
	h := newHealth(t, http.StatusOK)
	p := fast
	p.StopGrace = 200 * time.Millisecond
	// The ignored SIGTERM is inherited by the shell's children as well.
	// The health check answers before the shell runs, so the test waits
	// for the trap to be set before it stops the process.
	trapped := filepath.Join(t.TempDir(), "trapped")
	s, rec := start(t, sh("trap '' TERM; touch "+trapped+"; sleep 60 & sleep 60; wait", h), p, nil)
	rec.waitFor(t, "ready", isState(supervisor.Ready))
	eventually(t, "the trap set", func() bool { _, err := os.Stat(trapped); return err == nil })
	pgid := s.Pgid()
	begin := time.Now()
	if err := s.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if elapsed := time.Since(begin); elapsed < p.StopGrace {
		t.Errorf("Stop returned after %v, before the grace period of %v", elapsed, p.StopGrace)
	}
	eventually(t, "no process of the group is left", func() bool { return groupGone(pgid) })
}

func TestStopContextCutsGrace(t *testing.T) {
	h := newHealth(t, http.StatusOK)
	p := fast
	p.StopGrace = time.Hour
	trapped := filepath.Join(t.TempDir(), "trapped")
	s, rec := start(t, sh("trap '' TERM; touch "+trapped+"; sleep 60; wait", h), p, nil)
	rec.waitFor(t, "ready", isState(supervisor.Ready))
	eventually(t, "the trap set", func() bool { _, err := os.Stat(trapped); return err == nil })
	pgid := s.Pgid()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := s.Stop(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop = %v, want the context's deadline", err)
	}
	eventually(t, "no process of the group is left", func() bool { return groupGone(pgid) })
}

func TestStopKillsForkedProcesses(t *testing.T) {
	h := newHealth(t, http.StatusOK)
	s, rec := start(t, sh("sleep 60 & sleep 60 & wait", h), fast, nil)
	rec.waitFor(t, "ready", isState(supervisor.Ready))
	pgid := s.Pgid()
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "no process of the group is left", func() bool { return groupGone(pgid) })
}

func TestRestartAfterCrash(t *testing.T) {
	h := newHealth(t, http.StatusOK)
	s, rec := start(t, sh("echo run; sleep 0.3; echo dying >&2; exit 3", h), fast, nil)
	first := rec.waitFor(t, "ready", isState(supervisor.Ready))
	if first.Restarts != 0 {
		t.Errorf("first ready after %d restarts, want 0", first.Restarts)
	}
	rec.waitFor(t, "ready again after a restart", func(st supervisor.Status) bool {
		return st.State == supervisor.Ready && st.Restarts >= 1
	})
	// Between the two: starting again, with the same restart count as the
	// crashed run.
	all := rec.statuses()
	var sawRestarting bool
	for i := 1; i < len(all); i++ {
		if all[i-1].State == supervisor.Ready && all[i].State == supervisor.Starting {
			sawRestarting = true
			if all[i].Restarts != all[i-1].Restarts {
				t.Errorf("restarting %+v after ready %+v, want the same count", all[i], all[i-1])
			}
		}
	}
	if !sawRestarting {
		t.Errorf("statuses %+v: no starting between ready ones", all)
	}
	tail := s.LogTail()
	for _, want := range []string{"run\n", "dying\n", "exited (exit status 3)"} {
		if !strings.Contains(tail, want) {
			t.Errorf("log tail %q lacks %q", tail, want)
		}
	}
}

func TestCrashLoop(t *testing.T) {
	h := newHealth(t, http.StatusOK)
	p := fast
	p.MaxCrashes = 3
	s, rec := start(t, sh("echo 'bad config' >&2; exit 7", h), p, nil)
	st := rec.waitFor(t, "failed", isState(supervisor.Failed))
	<-s.Done()
	if st.Failure == nil {
		t.Fatal("failed without a failure")
	}
	if got, want := st.Failure.ExitCode, 7; got != want {
		t.Errorf("exit code = %d, want %d", got, want)
	}
	if got, want := st.Restarts, 2; got != want {
		t.Errorf("restarts = %d, want %d", got, want)
	}
	for _, want := range []string{"crashed 3 times", "exit status 7"} {
		if !strings.Contains(st.Failure.Reason, want) {
			t.Errorf("reason %q lacks %q", st.Failure.Reason, want)
		}
	}
	if got, want := strings.Count(st.Failure.LogTail, "bad config\n"), 3; got != want {
		t.Errorf("log tail has %d runs' output, want %d:\n%s", got, want, st.Failure.LogTail)
	}
	if last := rec.statuses()[len(rec.statuses())-1]; last.State != supervisor.Failed {
		t.Errorf("last status %+v, want failed", last)
	}
}

func TestCrashLoopBySignal(t *testing.T) {
	h := newHealth(t, http.StatusOK)
	p := fast
	p.MaxCrashes = 2
	_, rec := start(t, sh("kill -KILL $$", h), p, nil)
	st := rec.waitFor(t, "failed", isState(supervisor.Failed))
	if got, want := st.Failure.ExitCode, -1; got != want {
		t.Errorf("exit code = %d, want %d for a signal", got, want)
	}
	if !strings.Contains(st.Failure.Reason, "signal: killed") {
		t.Errorf("reason %q does not name the signal", st.Failure.Reason)
	}
}

func TestNeverHealthy(t *testing.T) {
	h := newHealth(t, http.StatusServiceUnavailable)
	p := fast
	p.StartTimeout = 200 * time.Millisecond
	s, rec := start(t, sh("exec sleep 60", h), p, nil)
	eventually(t, "a process runs", func() bool { return s.Pgid() != 0 })
	pgid := s.Pgid()
	st := rec.waitFor(t, "failed", isState(supervisor.Failed))
	if got, want := st.Failure.ExitCode, -1; got != want {
		t.Errorf("exit code = %d, want %d", got, want)
	}
	if !strings.Contains(st.Failure.Reason, "not healthy within 200ms") {
		t.Errorf("reason %q", st.Failure.Reason)
	}
	<-s.Done()
	if !groupGone(pgid) {
		t.Error("the unhealthy process was left running")
	}
}

func TestNotStarted(t *testing.T) {
	h := newHealth(t, http.StatusOK)
	dir := t.TempDir()
	_, rec := start(t, supervisor.Command{Name: "no-such-engine", SearchPath: dir, HealthURL: h.srv.URL}, fast, nil)
	st := rec.waitFor(t, "failed", isState(supervisor.Failed))
	if got, want := st.Failure.ExitCode, -1; got != want {
		t.Errorf("exit code = %d, want %d", got, want)
	}
	if !strings.Contains(st.Failure.Reason, `start no-such-engine: "no-such-engine" not found in `+dir) {
		t.Errorf("reason %q", st.Failure.Reason)
	}
}

func TestSearchPath(t *testing.T) {
	h := newHealth(t, http.StatusOK)
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	// The marker appears whole: a redirection creates the file before
	// echo writes it, so the test could read it empty.
	script := "#!/bin/sh\necho \"$0 $*\" > " + marker + ".tmp && mv " + marker + ".tmp " + marker + "\nexec sleep 60\n"
	if err := os.WriteFile(filepath.Join(dir, "fake-engine"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// A directory and a file that is not executable, both earlier in the
	// path, are passed over.
	notExec := t.TempDir()
	if err := os.WriteFile(filepath.Join(notExec, "fake-engine"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	asDir := t.TempDir()
	if err := os.Mkdir(filepath.Join(asDir, "fake-engine"), 0o755); err != nil {
		t.Fatal(err)
	}
	search := strings.Join([]string{"", asDir, notExec, dir}, string(os.PathListSeparator))
	_, rec := start(t, supervisor.Command{
		Name: "fake-engine", Args: []string{"serve", "m"}, SearchPath: search, HealthURL: h.srv.URL,
	}, fast, nil)
	rec.waitFor(t, "ready", isState(supervisor.Ready))
	eventually(t, "the script ran", func() bool { _, err := os.Stat(marker); return err == nil })
	b, err := os.ReadFile(marker)
	if err != nil {
		t.Fatal(err)
	}
	// The shell sets $0 to the path it runs; the arguments are as given.
	if got, want := strings.TrimSpace(string(b)), filepath.Join(dir, "fake-engine")+" serve m"; got != want {
		t.Errorf("ran %q, want %q", got, want)
	}
}

func TestAfterReady(t *testing.T) {
	t.Run("runs after each start", func(t *testing.T) {
		h := newHealth(t, http.StatusOK)
		var calls atomic.Int32
		cmd := sh("sleep 0.2; exit 1", h)
		cmd.AfterReady = func(context.Context) error {
			calls.Add(1)
			return nil
		}
		_, rec := start(t, cmd, fast, nil)
		rec.waitFor(t, "ready after a restart", func(st supervisor.Status) bool {
			return st.State == supervisor.Ready && st.Restarts >= 1
		})
		if got := calls.Load(); got < 2 {
			t.Errorf("AfterReady ran %d times, want once per start", got)
		}
	})
	t.Run("its error fails the instance", func(t *testing.T) {
		h := newHealth(t, http.StatusOK)
		cmd := sh("exec sleep 60", h)
		cmd.AfterReady = func(context.Context) error { return errors.New("pull qwen: file does not exist") }
		s, rec := start(t, cmd, fast, nil)
		st := rec.waitFor(t, "failed", isState(supervisor.Failed))
		if got, want := st.Failure.Reason, "pull qwen: file does not exist"; got != want {
			t.Errorf("reason = %q, want %q", got, want)
		}
		<-s.Done()
		for _, x := range rec.statuses() {
			if x.State == supervisor.Ready {
				t.Errorf("reported ready before AfterReady succeeded: %+v", rec.statuses())
			}
		}
	})
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestOutputLogged(t *testing.T) {
	h := newHealth(t, http.StatusOK)
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})).With("instance_id", "i-42")
	_, rec := start(t, sh("echo to-stdout; echo to-stderr >&2; exec sleep 60", h), fast, log)
	rec.waitFor(t, "ready", isState(supervisor.Ready))
	eventually(t, "both lines are logged", func() bool {
		out := buf.String()
		return strings.Contains(out, "line=to-stdout") && strings.Contains(out, "line=to-stderr")
	})
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.Contains(l, "line=to-std") && (!strings.Contains(l, "level=DEBUG") || !strings.Contains(l, "instance_id=i-42")) {
			t.Errorf("log line %q: want debug level and the instance ID", l)
		}
	}
}

// TestStopWhileSomethingElseHoldsTheOutput: a process the engine started
// in a session of its own (outside the engine's process group, so Stop
// cannot reach it) keeps the output pipe open; Stop still returns once
// the engine is gone, its log reader given up.
func TestStopWhileSomethingElseHoldsTheOutput(t *testing.T) {
	if _, err := exec.LookPath("setsid"); err != nil {
		t.Fatal("setsid not found: install util-linux (apt-get install util-linux)")
	}
	h := newHealth(t, http.StatusOK)
	s, rec := start(t, sh("setsid sleep 30 & exec sleep 60", h), fast, nil)
	rec.waitFor(t, "ready", isState(supervisor.Ready))
	t.Cleanup(func() { _ = exec.Command("pkill", "-f", "^sleep 30$").Run() })
	stopped := make(chan error, 1)
	go func() { stopped <- s.Stop(context.Background()) }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Stop did not return while a process outside the engine's group holds its output open")
	}
}
