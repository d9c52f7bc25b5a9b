package engine

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/modelport/modelport/services/inference-worker/internal/supervisor"
)

// Process runs one engine's instances as child processes of the worker,
// each under a supervisor: in a process group of its own, restarted after
// a crash, failed after a crash loop or when it never gets ready. Set the
// fields before the first Start; it is then safe for concurrent use.
type Process struct {
	Adapter Adapter
	// Ports are where instances listen and how others reach them.
	Ports Ports
	// SearchPath is where the engine's program is looked up, a list like
	// $PATH; empty: the PATH in Environ.
	SearchPath string
	// Environ is the environment instances start from, "KEY=value" each;
	// nil: the worker's own. The adapter's variables are set on top.
	Environ []string
	// Policy is how instances are supervised.
	Policy supervisor.Policy
	// Log receives the engines' output at debug level and their life
	// events; nil: nowhere.
	Log *slog.Logger
	// CPUThreads, when above 0, is the Threads of every instance that has
	// no GPUs and does not set its own: on a shared or small host, engines
	// that each spin one thread per core slow each other down badly.
	CPUThreads int

	poolOnce sync.Once
	pool     *portPool // shared by a Registry's engines
}

var _ Engine = (*Process)(nil)

// Name implements Engine.
func (p *Process) Name() string { return p.Adapter.Name() }

// Start implements Engine: it takes a free port, builds the command line
// and starts the engine under a supervisor. It fails only when there is no
// free port or the adapter rejects spec; an engine that cannot run is
// reported by the instance's Events as Failed.
func (p *Process) Start(_ context.Context, spec Spec) (Instance, error) {
	p.poolOnce.Do(func() {
		if p.pool == nil {
			p.pool = &portPool{}
		}
	})
	name := p.Adapter.Name()
	port, err := p.pool.take(p.Ports)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", name, spec.InstanceID, err)
	}
	host := p.Ports.Host
	if host == "" {
		host = "127.0.0.1"
	}
	if spec.GPUs == 0 && spec.Threads == 0 {
		spec.Threads = p.CPUThreads
	}
	cmd, err := p.Adapter.Command(spec, host, port)
	if err != nil {
		p.pool.release(port)
		return nil, err
	}
	environ := p.Environ
	if environ == nil {
		environ = os.Environ()
	}
	env := mergeEnv(environ, cmd.Env)
	search := p.SearchPath
	if search == "" {
		search = lookupEnv(env, "PATH")
	}
	advertise := p.Ports.Advertise
	if advertise == "" {
		advertise = host
	}
	local := "http://" + net.JoinHostPort(dialHost(host), strconv.Itoa(port))
	log := p.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("instance_id", spec.InstanceID, "engine", name)
	inst := &processInstance{
		engine:   name,
		endpoint: "http://" + net.JoinHostPort(advertise, strconv.Itoa(port)) + "/v1",
		events:   newEvents(),
		release:  sync.OnceFunc(func() { p.pool.release(port) }),
	}
	log.Info("starting engine", "command", cmd.Program+" "+strings.Join(cmd.Args, " "), "endpoint", inst.endpoint)
	inst.sup = supervisor.Start(supervisor.Command{
		Name: cmd.Program, Args: cmd.Args, Env: env, SearchPath: search,
		HealthURL:  local + cmd.Health,
		AfterReady: setup(local, cmd.Setup),
	}, p.Policy, log, inst.notify)
	return inst, nil
}

// processInstance is an engine process under a supervisor.
type processInstance struct {
	engine   string
	endpoint string
	events   *events
	release  func()
	sup      *supervisor.Supervisor
}

// Engine implements Instance.
func (i *processInstance) Engine() string { return i.engine }

// Endpoint implements Instance.
func (i *processInstance) Endpoint() string { return i.endpoint }

// Events implements Instance.
func (i *processInstance) Events() <-chan Event { return i.events.ch }

// Pgid is the engine's process group, 0 while none runs: for operators'
// tools and for tests that check nothing is left behind.
func (i *processInstance) Pgid() int { return i.sup.Pgid() }

// Stop implements Instance: SIGTERM to the engine's process group, SIGKILL
// after the policy's grace period or when ctx ends.
func (i *processInstance) Stop(ctx context.Context) error {
	err := i.sup.Stop(ctx)
	i.release()
	i.events.close()
	return err
}

func (i *processInstance) notify(st supervisor.Status) {
	switch st.State {
	case supervisor.Starting:
		i.events.send(Event{State: Starting, Restarts: st.Restarts})
	case supervisor.Ready:
		i.events.send(Event{State: Ready, Restarts: st.Restarts})
	case supervisor.Failed:
		i.events.send(Event{State: Failed, Restarts: st.Restarts, Failure: st.Failure})
	}
}

// setupClient makes an engine's setup requests; their context bounds them,
// since pulling a model takes as long as it takes.
var setupClient = &http.Client{Transport: &http.Transport{Proxy: nil}}

// setup returns the function that makes reqs against the engine at base,
// or nil when there are none.
func setup(base string, reqs []Request) func(context.Context) error {
	if len(reqs) == 0 {
		return nil
	}
	return func(ctx context.Context) error {
		for _, r := range reqs {
			if err := do(ctx, base, r); err != nil {
				return fmt.Errorf("%s %s: %w", r.Method, r.Path, err)
			}
		}
		return nil
	}
}

func do(ctx context.Context, base string, r Request) error {
	path, body := r.Path, r.Body
	for i, file := range r.Digests {
		sum, err := fileDigests.of(file)
		if err != nil {
			return err
		}
		path = strings.ReplaceAll(path, digestOf(i), sum)
		body = strings.ReplaceAll(body, digestOf(i), sum)
	}
	if r.SkipIfFound {
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, base+path, nil)
		if err != nil {
			return err
		}
		resp, err := setupClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
	}
	var content io.Reader = strings.NewReader(body)
	size := int64(len(body))
	if r.File != "" {
		f, err := os.Open(r.File)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		content, size = f, st.Size()
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, base+path, content)
	if err != nil {
		return err
	}
	req.ContentLength = size
	if r.File == "" {
		req.Header.Set("Content-Type", "application/json")
	} else {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := setupClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(answer))
	}
	// A streamed answer reports errors in a line of its own.
	sc := bufio.NewScanner(bytes.NewReader(answer))
	for sc.Scan() {
		var line struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Error != "" {
			return errors.New(line.Error)
		}
	}
	return nil
}

// fileDigests remembers the digests of model files: hashing weights takes
// a while, and every instance of a model needs the same digest.
var fileDigests = &digestCache{sums: map[fileVersion]*digest{}}

// digestCache computes each file version's SHA-256 digest once, however
// many instances ask at the same time. It is safe for concurrent use.
type digestCache struct {
	mu   sync.Mutex
	sums map[fileVersion]*digest
}

// fileVersion tells versions of a file apart, as make does: a changed
// file has another size or modification time.
type fileVersion struct {
	path    string
	size    int64
	modTime int64
}

type digest struct {
	once sync.Once
	sum  string
	err  error
}

// of returns path's digest as "sha256:<hex>".
func (c *digestCache) of(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a file", path)
	}
	v := fileVersion{path: path, size: st.Size(), modTime: st.ModTime().UnixNano()}
	c.mu.Lock()
	d, ok := c.sums[v]
	if !ok {
		d = &digest{}
		c.sums[v] = d
	}
	c.mu.Unlock()
	d.once.Do(func() {
		f, err := os.Open(path)
		if err != nil {
			d.err = err
			return
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			d.err = fmt.Errorf("hash %s: %w", path, err)
			return
		}
		d.sum = "sha256:" + hex.EncodeToString(h.Sum(nil))
	})
	if d.err != nil {
		c.mu.Lock()
		delete(c.sums, v) // a later attempt tries again
		c.mu.Unlock()
	}
	return d.sum, d.err
}

// mergeEnv sets vars on top of environ.
func mergeEnv(environ []string, vars map[string]string) []string {
	out := make([]string, 0, len(environ)+len(vars))
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := vars[k]; !ok {
			out = append(out, kv)
		}
	}
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		out = append(out, k+"="+vars[k])
	}
	return out
}

// lookupEnv returns the last value of key in environ, as the C library does
// not, but os/exec does.
func lookupEnv(environ []string, key string) string {
	for i := len(environ) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(environ[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// dialHost is the address the worker reaches its own instances at.
func dialHost(listen string) string {
	switch listen {
	case "", "0.0.0.0", "::", "[::]":
		return "127.0.0.1"
	}
	return listen
}

// portPool hands out ports to engine processes. A port stays taken from
// Start to Stop, so that two engines that have not bound their ports yet
// are never given the same one.
type portPool struct {
	mu   sync.Mutex
	used map[int]bool
}

// take returns a free port from ports that the pool has not handed out.
func (pp *portPool) take(ports Ports) (int, error) {
	ln, err := pp.listen(ports)
	if err != nil {
		return 0, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port, nil
}

// listen returns a listener on a free port the pool has not handed out,
// and takes the port until release.
func (pp *portPool) listen(ports Ports) (net.Listener, error) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.used == nil {
		pp.used = map[int]bool{}
	}
	if ports.First == 0 {
		var held []net.Listener
		defer func() {
			for _, ln := range held {
				ln.Close()
			}
		}()
		for range 64 {
			ln, err := ports.Listen()
			if err != nil {
				return nil, err
			}
			port := ln.Addr().(*net.TCPAddr).Port
			if !pp.used[port] {
				pp.used[port] = true
				return ln, nil
			}
			held = append(held, ln) // so the next Listen gets another port
		}
		return nil, errors.New("no free port")
	}
	for port := ports.First; port <= ports.Last; port++ {
		if pp.used[port] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(ports.Host, strconv.Itoa(port)))
		if err == nil {
			pp.used[port] = true
			return ln, nil
		}
	}
	return nil, fmt.Errorf("no free port in %d-%d", ports.First, ports.Last)
}

func (pp *portPool) release(port int) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	delete(pp.used, port)
}
