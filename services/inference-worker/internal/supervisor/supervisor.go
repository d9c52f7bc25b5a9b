// Package supervisor runs one engine process and keeps it running: it
// starts the process in a process group of its own, keeps the tail of its
// output, waits until its health check answers, restarts it with
// exponential backoff when it crashes, declares it failed when it crashes
// too often or never gets healthy, and stops it so that nothing it started
// is left behind.
package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Command is the process to supervise.
type Command struct {
	// Name is the program: a path, or a name looked up in SearchPath. It is
	// also the process's argv[0].
	Name string
	// Args follow the program name.
	Args []string
	// Env is the process's whole environment, "KEY=value" each.
	Env []string
	// Dir is the working directory; empty: the worker's.
	Dir string
	// SearchPath is where Name is looked up, a list like $PATH; empty: the
	// worker's own PATH.
	SearchPath string
	// HealthURL answers 200 once the process takes requests.
	HealthURL string
	// AfterReady, when set, runs each time a (re)started process first
	// answers its health check, before it counts as ready. An error fails
	// the instance; ctx ends when the process exits or is stopped.
	AfterReady func(ctx context.Context) error
}

// Policy is how hard the supervisor tries. The zero value of each field
// takes its default.
type Policy struct {
	// StartTimeout bounds how long a (re)started process may take to answer
	// its health check, AfterReady included. Default 20 minutes: a large
	// model's weights may have to be downloaded first.
	StartTimeout time.Duration
	// Backoff is the wait before the first restart; each further crash
	// within CrashWindow doubles it, up to MaxBackoff. Defaults 1s and 1m.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// MaxCrashes crashes within CrashWindow fail the instance. Defaults 5
	// and 10 minutes.
	MaxCrashes  int
	CrashWindow time.Duration
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
	// Default 30s.
	StopGrace time.Duration
	// PollInterval is the longest wait between two health checks. Default 1s.
	PollInterval time.Duration
	// LogLines and LogBytes bound the kept output. Defaults 200 and 64 KiB.
	LogLines int
	LogBytes int
}

func (p Policy) withDefaults() Policy {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&p.StartTimeout, 20*time.Minute)
	def(&p.Backoff, time.Second)
	def(&p.MaxBackoff, time.Minute)
	def(&p.CrashWindow, 10*time.Minute)
	def(&p.StopGrace, 30*time.Second)
	def(&p.PollInterval, time.Second)
	if p.MaxCrashes <= 0 {
		p.MaxCrashes = 5
	}
	if p.LogLines <= 0 {
		p.LogLines = 200
	}
	if p.LogBytes <= 0 {
		p.LogBytes = 64 << 10
	}
	return p
}

// State is where a supervised process is in its life.
type State string

// The states. Starting and Ready alternate as the process crashes and is
// restarted; Failed and Stopped are final.
const (
	Starting State = "starting"
	Ready    State = "ready"
	Failed   State = "failed"
	Stopped  State = "stopped"
)

// Status is reported on every change of State.
type Status struct {
	State State
	// Restarts counts the restarts after crashes so far.
	Restarts int
	// Failure says why, when State is Failed.
	Failure *Failure
}

// Failure is why a supervised process was given up on.
type Failure struct {
	// Reason is for people: "crashed 5 times within 10m0s; last: exit
	// status 1", "not healthy within 20m0s", "start vllm: ...".
	Reason string
	// ExitCode is the last exit status; -1 when the process was killed by a
	// signal, by the supervisor, or never started.
	ExitCode int
	// LogTail is the end of the process's output, across restarts.
	LogTail string
}

func (f *Failure) Error() string { return f.Reason }

// Supervisor runs one process. Its methods are safe for concurrent use.
type Supervisor struct {
	cmd    Command
	policy Policy
	log    *slog.Logger
	notify func(Status)
	tail   *logTail

	stopping chan struct{} // closed by Stop
	killNow  chan struct{} // closed when Stop's context ends first
	stopOnce sync.Once
	killOnce sync.Once
	done     chan struct{} // closed when the run loop returns

	mu     sync.Mutex
	status Status
	pgid   int
}

// Start starts cmd and supervises it until Stop or failure. notify, when
// set, is called with every change of Status, from the supervisor's own
// goroutine, one call at a time: it must not block for long or call Stop.
// A program that cannot be started is reported as Failed, not returned.
func Start(cmd Command, policy Policy, log *slog.Logger, notify func(Status)) *Supervisor {
	policy = policy.withDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if notify == nil {
		notify = func(Status) {}
	}
	s := &Supervisor{
		cmd: cmd, policy: policy, log: log, notify: notify,
		tail:     newLogTail(policy.LogLines, policy.LogBytes),
		stopping: make(chan struct{}),
		killNow:  make(chan struct{}),
		done:     make(chan struct{}),
	}
	go s.run()
	return s
}

// Status returns the current status.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// LogTail returns the end of the process's output, across restarts.
func (s *Supervisor) LogTail() string { return s.tail.String() }

// Pgid returns the process group of the running process, 0 when none runs.
func (s *Supervisor) Pgid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pgid
}

// Done is closed once the supervisor has given up or stopped, with no
// process of its group left running.
func (s *Supervisor) Done() <-chan struct{} { return s.done }

// Stop sends SIGTERM to the process group, SIGKILL after the policy's
// StopGrace or as soon as ctx ends, and waits until the process has exited.
// It returns ctx's error when the grace period was cut short. Stopping a
// supervisor that already failed or stopped returns at once.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stopping) })
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		s.killOnce.Do(func() { close(s.killNow) })
		<-s.done
		return fmt.Errorf("stop %s: killed before the grace period ended: %w", s.cmd.Name, ctx.Err())
	}
}

func (s *Supervisor) setStatus(st Status) {
	s.mu.Lock()
	changed := st.State != s.status.State || st.Restarts != s.status.Restarts
	s.status = st
	s.mu.Unlock()
	if changed {
		s.notify(st)
	}
}

func (s *Supervisor) fail(f *Failure, restarts int) {
	f.LogTail = s.tail.String()
	s.log.Error("engine failed", "reason", f.Reason, "exit_code", f.ExitCode, "restarts", restarts)
	s.setStatus(Status{State: Failed, Restarts: restarts, Failure: f})
}

// run is the supervision loop: start, wait, restart or give up.
func (s *Supervisor) run() {
	defer close(s.done)
	var crashes []time.Time
	restarts := 0
	s.setStatus(Status{State: Starting})
	for {
		p, err := s.spawn()
		if err != nil {
			s.fail(&Failure{Reason: fmt.Sprintf("start %s: %v", s.cmd.Name, err), ExitCode: -1}, restarts)
			return
		}
		s.mu.Lock()
		s.pgid = p.pgid
		s.mu.Unlock()
		s.log.Info("engine started", "pid", p.pgid, "restarts", restarts)

		how, failure := s.supervise(p, restarts)
		s.mu.Lock()
		s.pgid = 0
		s.mu.Unlock()
		switch how {
		case stopped:
			s.setStatus(Status{State: Stopped, Restarts: restarts})
			return
		case gaveUp:
			s.fail(failure, restarts)
			return
		}

		// The process exited on its own: a crash, whatever its status.
		st := p.cmd.ProcessState
		now := time.Now()
		crashes = append(crashes, now)
		for len(crashes) > 0 && now.Sub(crashes[0]) > s.policy.CrashWindow {
			crashes = crashes[1:]
		}
		if len(crashes) >= s.policy.MaxCrashes {
			s.fail(&Failure{
				Reason:   fmt.Sprintf("crashed %d times within %s; last: %s", len(crashes), s.policy.CrashWindow, st),
				ExitCode: st.ExitCode(),
			}, restarts)
			return
		}
		delay := s.policy.Backoff
		for i := 1; i < len(crashes) && delay < s.policy.MaxBackoff; i++ {
			delay *= 2
		}
		delay = min(delay, s.policy.MaxBackoff)
		s.log.Warn("engine exited; restarting", "status", st.String(), "in", delay, "restarts", restarts)
		s.tail.add(fmt.Sprintf("[supervisor] %s exited (%s); restarting in %s", s.cmd.Name, st, delay))
		s.setStatus(Status{State: Starting, Restarts: restarts})
		select {
		case <-s.stopping:
			s.setStatus(Status{State: Stopped, Restarts: restarts})
			return
		case <-time.After(delay):
		}
		restarts++
	}
}

// outcome is how supervise ended.
type outcome int

const (
	exited  outcome = iota // the process exited on its own
	stopped                // Stop ended it
	gaveUp                 // the supervisor ended it: never healthy
)

// supervise waits for one started process to get healthy and then to
// exit, or for Stop. The process is gone when it returns.
func (s *Supervisor) supervise(p *proc, restarts int) (outcome, *Failure) {
	defer s.cleanup(p)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan error, 1)
	go func() { ready <- s.becomeReady(ctx) }()
	timeout := time.NewTimer(s.policy.StartTimeout)
	defer timeout.Stop()
	timedOut := timeout.C
	for {
		select {
		case err := <-ready:
			ready, timedOut = nil, nil
			if err != nil {
				select {
				case <-p.exited: // it crashed while being set up
					return exited, nil
				default:
				}
				s.terminate(p)
				return gaveUp, &Failure{Reason: err.Error(), ExitCode: -1}
			}
			s.log.Info("engine ready", "restarts", restarts)
			s.setStatus(Status{State: Ready, Restarts: restarts})
		case <-timedOut:
			s.terminate(p)
			return gaveUp, &Failure{Reason: fmt.Sprintf("not healthy within %s", s.policy.StartTimeout), ExitCode: -1}
		case <-p.exited:
			return exited, nil
		case <-s.stopping:
			s.terminate(p)
			return stopped, nil
		}
	}
}

// becomeReady waits for the health check, then runs AfterReady.
func (s *Supervisor) becomeReady(ctx context.Context) error {
	if err := waitHealthy(ctx, s.cmd.HealthURL, s.policy.PollInterval); err != nil {
		return err
	}
	if s.cmd.AfterReady == nil {
		return nil
	}
	return s.cmd.AfterReady(ctx)
}

// proc is one run of the command.
type proc struct {
	cmd    *exec.Cmd
	pgid   int
	exited chan struct{} // closed once Wait returned; cmd.ProcessState is set
	logs   chan struct{} // closed once the output pipe is drained
	out    *os.File      // the pipe's read end
}

// spawn starts the command with its output going into the log tail and,
// at debug level, into the worker's log.
func (s *Supervisor) spawn() (*proc, error) {
	path, err := lookPath(s.cmd.Name, s.cmd.SearchPath)
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	c := &exec.Cmd{
		Path: path, Args: append([]string{s.cmd.Name}, s.cmd.Args...), Env: s.cmd.Env, Dir: s.cmd.Dir,
		// One pipe for both keeps their lines in the order written.
		Stdout: w, Stderr: w,
		SysProcAttr: sysProcAttr(),
	}
	// The engine holds the pipe's read end too (unused, as its fd 3).
	keep := engineReadEnd(r)
	if keep != nil {
		c.ExtraFiles = []*os.File{keep}
	}
	err = c.Start()
	w.Close()
	if keep != nil {
		keep.Close()
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	p := &proc{cmd: c, pgid: c.Process.Pid, exited: make(chan struct{}), logs: make(chan struct{}), out: r}
	go s.readLogs(p)
	go func() {
		_ = c.Wait()
		close(p.exited)
	}()
	return p, nil
}

// readLogs copies the process's output, line by line, until every process
// holding the pipe has exited or cleanup closes it.
func (s *Supervisor) readLogs(p *proc) {
	defer close(p.logs)
	br := bufio.NewReaderSize(p.out, 16<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			l := strings.TrimRight(string(line), "\r\n")
			s.tail.add(l)
			s.log.Debug("engine output", "pid", p.pgid, "line", l)
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// terminate sends SIGTERM to the process group and SIGKILL after the grace
// period or when Stop's context ends, and waits for the process to exit.
func (s *Supervisor) terminate(p *proc) {
	_ = syscall.Kill(-p.pgid, syscall.SIGTERM)
	grace := time.NewTimer(s.policy.StopGrace)
	defer grace.Stop()
	select {
	case <-p.exited:
		return
	case <-grace.C:
		s.log.Warn("engine ignored SIGTERM; killing it", "grace", s.policy.StopGrace)
	case <-s.killNow:
	}
	_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
	<-p.exited
}

// cleanup kills whatever the process left running in its group (workers
// it forked hold GPU memory) and drains its output, so the log tail is
// complete before anyone reads it.
func (s *Supervisor) cleanup(p *proc) {
	<-p.exited
	_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
	select {
	case <-p.logs:
	case <-time.After(2 * time.Second):
		// Something outside the group still holds the pipe open.
	}
	p.out.Close()
	<-p.logs
}

// lookPath finds name in the directories of searchPath, like the shell.
// A name with a slash is used as it is.
func lookPath(name, searchPath string) (string, error) {
	if strings.Contains(name, "/") {
		if err := executable(name); err != nil {
			return "", err
		}
		return name, nil
	}
	if searchPath == "" {
		return exec.LookPath(name)
	}
	for _, dir := range filepath.SplitList(searchPath) {
		if dir == "" {
			continue // an empty entry would mean the working directory
		}
		path := filepath.Join(dir, name)
		if executable(path) == nil {
			return path, nil
		}
	}
	return "", fmt.Errorf("%q not found in %s", name, searchPath)
}

func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}
