package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/modelport/modelport/libs/access"
)

// The many-streams scenario: many streaming chat completions held open at
// once, as chat clients hold them while a model writes slowly, sent
// straight to a simulator instance and through a router process of its
// own. It measures the time to first token each path gives and the
// router's memory per open stream.

// streamsRamp is the time over which a run opens its streams, evenly: a
// burst of a thousand at one instant would measure the load generator's
// own scheduling more than either path, and so would a ramp whose new
// requests (each one the engine tokenizes and answers in this process)
// take most of a loaded 2-core machine.
const streamsRamp = 4 * time.Second

// streamsRounds is the measured rounds, after a warm-up.
const streamsRounds = 3

// streamsMaxTokens is each answer's length: with the engine below, a
// stream stays open about 11 s, well past the ramp, so every stream of a
// run is open at once for seconds.
const streamsMaxTokens = 16

// streamsEngine is the simulator of the scenario: an engine that writes a
// token every 750 ms, as a large model under load does.
var streamsEngine = map[string]string{
	"MODELPORT_SIM_TTFT": "20ms",
	"MODELPORT_SIM_ITL":  "750ms",
}

// streamsRouterSettings are the router process's settings beyond its
// address and NATS identity: errors only in its log, as the bench's
// in-process services log.
var streamsRouterSettings = []string{"MODELPORT_LOG_LEVEL=error"}

// streamsRun is one run of n streams against one path.
type streamsRun struct {
	ttft     []time.Duration // sorted
	peakOpen int             // streams open at once, at most
	mem      *streamsMemory  // the router's, sampled while all were open
	// routerCPU is the router process's CPU time (user and system) over
	// the run; on the engine's path, an idle router's.
	routerCPU time.Duration
}

func (r streamsRun) quantile(f float64) time.Duration {
	return r.ttft[min(len(r.ttft)-1, int(f*float64(len(r.ttft))))]
}

// streamsMemory is a router process's memory at one moment: resident
// memory, the Go heap in use, goroutine stacks, and goroutines.
type streamsMemory struct {
	rss, heap, stacks, goroutines int64
}

// benchStreams runs n streams at once, opened over streamsRamp, straight
// to a simulator instance and through a router process of its own (the
// routerBin binary, as bin/router is deployed) against a platform of its
// own, and returns the report section. A warm-up round runs first
// (its router run is the one whose memory is reported: the first time the
// fresh router holds n streams); then streamsRounds measured rounds, the
// two paths interleaved in each.
func benchStreams(ctx context.Context, n int, routerBin string) (string, error) {
	loadBefore := loadAverage()
	files, err := ensureOpenFiles(uint64(4*n + 256))
	if err != nil {
		return "", err
	}
	routerBin, err = findRouterBinary(routerBin)
	if err != nil {
		return "", err
	}
	p, stop, err := startBenchPlatform(ctx, "modelport-bench-streams-", streamsEngine)
	if err != nil {
		return "", err
	}
	defer stop()
	const key = benchAdminKey
	ctl := &http.Client{Timeout: time.Minute}
	model, endpoint, err := benchService(ctx, ctl, p.BaseURL, key)
	if err != nil {
		return "", err
	}
	router, err := startRouterProcess(ctx, p, routerBin, streamsRouterSettings)
	if err != nil {
		return "", err
	}
	defer router.stop()

	// One connection per stream, kept for the next run: every run after
	// the warm-up reuses the client's connections on both paths.
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConns: 4 * n, MaxIdleConnsPerHost: 2 * n, IdleConnTimeout: 5 * time.Minute, DisableCompression: true,
	}}
	body := func(i, maxTokens int) []byte {
		b, _ := json.Marshal(map[string]any{
			"model":      model,
			"messages":   []map[string]string{{"role": "user", "content": fmt.Sprintf("Stream %d: tell a long story.", i)}},
			"max_tokens": maxTokens,
			"stream":     true,
		})
		return b
	}
	targets := []benchTarget{
		{name: "engine direct", url: endpoint + "/chat/completions"},
		{name: "router", url: router.base + "/v1/chat/completions", key: key},
	}
	// The router learns of the instance through its watch; once it
	// answers, it is idle, and its memory then is the baseline.
	if err := firstAnswer(ctx, client, targets[1], body(0, 2)); err != nil {
		return "", fmt.Errorf("router: %w; its log: %s", err, router.logs.String())
	}
	idle, err := router.memory(ctx, ctl, key)
	if err != nil {
		return "", err
	}
	var open *streamsMemory
	var rounds [][2]streamsRun
	for round := range 1 + streamsRounds {
		var runs [2]streamsRun
		for t, target := range targets {
			// The memory is sampled in the warm-up round only, so the
			// measured rounds' router CPU is the streams' alone.
			var sample *routerProcess
			if t == 1 && round == 0 {
				sample = router
			}
			cpu := processCPU(router.cmd.Process.Pid)
			run, err := runStreams(ctx, client, ctl, key, target, n, body, sample)
			if err != nil {
				return "", fmt.Errorf("%s, round %d: %w", target.name, round, err)
			}
			run.routerCPU = processCPU(router.cmd.Process.Pid) - cpu
			runs[t] = run
		}
		if round == 0 {
			open = runs[1].mem
			continue
		}
		rounds = append(rounds, runs)
	}
	return streamsReport(n, rounds, idle, *open, files, loadBefore, loadAverage()), nil
}

// runStreams opens n streams against target over streamsRamp, each timed
// from its own request's start to its first content chunk, and reads
// them to the end. Every stream must be open at once for the run to
// count. With router set, the router's memory is sampled every 200 ms
// while all n are open, and the largest sample of each figure kept.
func runStreams(ctx context.Context, c, ctl *http.Client, key string, target benchTarget, n int, body func(i, maxTokens int) []byte, router *routerProcess) (streamsRun, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		ttft     = make([]time.Duration, n)
		open     atomic.Int64 // streams past their first token and not ended
		peak     atomic.Int64
		allOpen  = make(chan struct{})
		openOnce sync.Once
		errOnce  sync.Once
		first    error
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		errOnce.Do(func() { first = err; cancel() })
	}
	start := time.Now()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * streamsRamp / time.Duration(n))); d > 0 {
			time.Sleep(d)
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			opened := func(d time.Duration) {
				ttft[i] = d
				now := open.Add(1)
				for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
				}
				if now == int64(n) {
					openOnce.Do(func() { close(allOpen) })
				}
			}
			if err := timeStream(ctx, c, target, body(i, streamsMaxTokens), opened, func() { open.Add(-1) }); err != nil {
				fail(fmt.Errorf("stream %d: %w", i, err))
			}
		}()
	}
	var mem *streamsMemory
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		if router == nil {
			return
		}
		select {
		case <-allOpen:
		case <-ctx.Done():
			return
		}
		for open.Load() == int64(n) {
			m, err := router.memory(ctx, ctl, key)
			if err != nil {
				fail(fmt.Errorf("router memory: %w", err))
				return
			}
			if open.Load() != int64(n) {
				break // a stream ended while it was read: not all open
			}
			if mem == nil {
				mem = &m
			}
			mem.rss, mem.heap, mem.stacks = max(mem.rss, m.rss), max(mem.heap, m.heap), max(mem.stacks, m.stacks)
			mem.goroutines = max(mem.goroutines, m.goroutines)
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	wg.Wait()
	cancel()
	<-sampled
	if first != nil {
		return streamsRun{}, first
	}
	r := streamsRun{ttft: ttft, peakOpen: int(peak.Load()), mem: mem}
	if r.peakOpen < n {
		return r, fmt.Errorf("only %d of %d streams were open at once: the streams are too short for the ramp", r.peakOpen, n)
	}
	if router != nil && mem == nil {
		return r, fmt.Errorf("the router's memory could not be read while all %d streams were open", n)
	}
	slices.Sort(r.ttft)
	return r, nil
}

// timeStream sends one streamed chat request, calls opened with the time
// from its start to its first content chunk, reads the stream to [DONE]
// and then calls ended (only if opened was called).
func timeStream(ctx context.Context, c *http.Client, target benchTarget, body []byte, opened func(time.Duration), ended func()) error {
	resp, t0, err := target.post(ctx, c, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1000))
		return fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	got := false
	defer func() {
		if got {
			ended()
		}
	}()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Bytes()
		if !got && bytes.HasPrefix(line, []byte("data: ")) && bytes.Contains(line, []byte(`"content":"`)) && !bytes.Contains(line, []byte(`"content":""`)) {
			got = true
			opened(time.Since(t0))
		}
		if string(line) == "data: [DONE]" {
			if !got {
				return fmt.Errorf("stream without content")
			}
			return nil
		}
	}
	return fmt.Errorf("stream ended without [DONE]: %v", sc.Err())
}

// firstAnswer sends a short stream until one is answered, for up to 30 s.
func firstAnswer(ctx context.Context, c *http.Client, target benchTarget, body []byte) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := timeStream(ctx, c, target, body, func(time.Duration) {}, func() {})
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// findRouterBinary returns bin, or, when empty, the router beside this
// binary, where make build puts it; an error says where it is missing.
func findRouterBinary(bin string) (string, error) {
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", err
		}
		bin = filepath.Join(filepath.Dir(exe), "router")
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("no router binary at %s (make build puts one beside bin/modelport): %v", bin, err)
	}
	return bin, nil
}

// routerProcess is a router binary run against a platform's NATS with the
// router's own identity, as a deployment runs it.
type routerProcess struct {
	cmd  *exec.Cmd
	base string
	logs *bytes.Buffer
}

// startRouterProcess starts routerBin on a free loopback port against p's
// NATS, with settings added to this process's environment, and waits for
// it to be healthy.
func startRouterProcess(ctx context.Context, p *platform, routerBin string, settings []string) (*routerProcess, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.CommandContext(ctx, routerBin)
	cmd.Env = append(os.Environ(), append([]string{"MODELPORT_NATS_URL=" + p.NATSURL, "MODELPORT_HTTP_ADDR=" + addr,
		"MODELPORT_NATS_NKEY=" + access.SeedFile(p.NATSCreds, access.Router)}, settings...)...)
	r := &routerProcess{cmd: cmd, base: "http://" + addr, logs: &bytes.Buffer{}}
	cmd.Stdout, cmd.Stderr = r.logs, r.logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if err := waitHealthy(ctx, &http.Client{Timeout: 5 * time.Second}, r.base); err != nil {
		r.stop()
		return nil, fmt.Errorf("router: %v; its log: %s", err, r.logs.String())
	}
	return r, nil
}

// stop interrupts the router and waits for it, killing it after 20 s.
func (r *routerProcess) stop() {
	_ = r.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = r.cmd.Process.Kill()
		<-done
	}
}

// memory reads the router's resident memory from /proc, and its Go heap
// in use and goroutines from its /metrics (an admin key reads them).
func (r *routerProcess) memory(ctx context.Context, c *http.Client, key string) (streamsMemory, error) {
	var m streamsMemory
	var err error
	if m.rss, err = procMemory(r.cmd.Process.Pid, "VmRSS"); err != nil {
		return m, err
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", r.base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := c.Do(req)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return m, fmt.Errorf("/metrics: status %d", resp.StatusCode)
	}
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		var into *int64
		switch name {
		case "go_memstats_heap_inuse_bytes":
			into = &m.heap
		case "go_memstats_stack_inuse_bytes":
			into = &m.stacks
		case "go_goroutines":
			into = &m.goroutines
		default:
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return m, fmt.Errorf("%s: %w", name, err)
		}
		*into, found = int64(v), found+1
	}
	if found != 3 {
		return m, fmt.Errorf("/metrics lacks go_memstats_heap_inuse_bytes, go_memstats_stack_inuse_bytes or go_goroutines (%v)", sc.Err())
	}
	return m, nil
}

// openFiles is the process's open files limit, and what it was before
// the bench raised it (the same when it did not).
type openFiles struct{ limit, was uint64 }

// ensureOpenFiles raises this process's soft limit of open files to need
// where it is lower and the hard limit allows (Go raises it to the hard
// limit at start on Linux; this checks, and says so, rather than failing
// mid-run with "too many open files").
func ensureOpenFiles(need uint64) (openFiles, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return openFiles{}, fmt.Errorf("open files limit: %w", err)
	}
	f := openFiles{limit: lim.Cur, was: lim.Cur}
	if lim.Cur >= need {
		return f, nil
	}
	if lim.Max < need {
		return f, fmt.Errorf("the open files limit is %d (hard %d); this scenario needs %d: raise it (ulimit -n %d) or run fewer streams (-streams)", lim.Cur, lim.Max, need, need)
	}
	lim.Cur = need
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return f, fmt.Errorf("raise the open files limit to %d: %w", need, err)
	}
	f.limit = need
	return f, nil
}

func streamsReport(n int, rounds [][2]streamsRun, idle, open streamsMemory, files openFiles, loadBefore, loadAfter string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## %s concurrent streams: time to first token and router memory\n\n", thousands(n))
	fmt.Fprintf(&b, "%s streaming chat completions held open at once against one simulator instance that takes %s to its first token and %s per further token (`MODELPORT_SIM_TTFT`, `MODELPORT_SIM_ITL`), `max_tokens` %d, so each stream stays open about %.1f s. ",
		thousands(n), streamsEngine["MODELPORT_SIM_TTFT"], streamsEngine["MODELPORT_SIM_ITL"], streamsMaxTokens, streamsLength().Seconds())
	fmt.Fprintf(&b, "The streams are opened evenly over %s, each on a connection of its own, and each is timed from its own request's start to its first content chunk; every stream of a run is open at once before the first ends. ", streamsRamp)
	b.WriteString("Two paths to the same instance: straight to it (the engine), and through a router process of its own (`bin/router` against the platform's NATS with the router's identity, logging errors only): API-key check, routing, the rewrite of every chunk, metrics and traces, the usage event stored in JetStream before the last chunk. ")
	fmt.Fprintf(&b, "The load generator and the engine share one process; the router runs in another, on the same machine. After a warm-up round, %d rounds run the two paths in turn. ", len(rounds))
	b.WriteString("As in the request-path section, each path's better run is kept (for each quantile), to damp the noise of a shared machine; every round is shown below it. ")
	b.WriteString("*Added* is the router's time to first token less the engine's, at the same quantile. ")
	fmt.Fprintf(&b, "Load average (1 min) %s before, %s after, on %d CPUs; open files limit %d", loadBefore, loadAfter, runtime.NumCPU(), files.limit)
	if files.limit != files.was {
		fmt.Fprintf(&b, " (raised from %d)", files.was)
	}
	b.WriteString(".\n\n")
	best := func(t int, q float64) time.Duration {
		var d time.Duration
		for i, r := range rounds {
			if v := r[t].quantile(q); i == 0 || v < d {
				d = v
			}
		}
		return d
	}
	verdict := func(added99 time.Duration) string {
		if added99 > 2*time.Millisecond {
			return "**missed**"
		}
		return "met"
	}
	b.WriteString("The router's CPU time per stream (user and system, from `/proc`, over its run: the request, every chunk, the usage event) does not depend on how busy the machine is, as latency does.\n\n")
	b.WriteString("| runs | engine TTFT p50 / p99 | router TTFT p50 / p99 | **router added p50 / p99** | added p99 ≤ 2 ms | router CPU per stream |\n|---|---:|---:|---:|---|---:|\n")
	row := func(name string, e50, e99, r50, r99, cpu time.Duration) {
		fmt.Fprintf(&b, "| %s | %s / %s | %s / %s | **%s / %s** | %s | %.0f µs |\n", name, ms(e50), ms(e99), ms(r50), ms(r99), ms(r50-e50), ms(r99-e99), verdict(r99-e99),
			float64(cpu)/float64(n)/float64(time.Microsecond))
	}
	var cpu time.Duration
	for i, r := range rounds {
		if i == 0 || r[1].routerCPU < cpu {
			cpu = r[1].routerCPU
		}
	}
	row("**better of each**", best(0, 0.5), best(0, 0.99), best(1, 0.5), best(1, 0.99), cpu)
	for i, r := range rounds {
		row(fmt.Sprintf("round %d", i+1), r[0].quantile(0.5), r[0].quantile(0.99), r[1].quantile(0.5), r[1].quantile(0.99), r[1].routerCPU)
	}
	per := func(open, idle int64) string {
		return fmt.Sprintf("%.1f KiB", float64(open-idle)/float64(n)/1024)
	}
	fmt.Fprintf(&b, "\nThe router's memory with %s streams open (the largest of samples every 200 ms while all were open, in the warm-up round: the first time the router held them), against the same router idle before it. Resident memory holds the heap in use, the goroutine stacks and what the Go runtime keeps:\n\n", thousands(n))
	b.WriteString("| figure | idle | all streams open | **per open stream** |\n|---|---:|---:|---:|\n")
	fmt.Fprintf(&b, "| resident memory (VmRSS) | %.1f MiB | %.1f MiB | **%s** |\n", mib(idle.rss), mib(open.rss), per(open.rss, idle.rss))
	fmt.Fprintf(&b, "| Go heap in use (`go_memstats_heap_inuse_bytes`) | %.1f MiB | %.1f MiB | **%s** |\n", mib(idle.heap), mib(open.heap), per(open.heap, idle.heap))
	fmt.Fprintf(&b, "| goroutine stacks (`go_memstats_stack_inuse_bytes`) | %.1f MiB | %.1f MiB | **%s** |\n", mib(idle.stacks), mib(open.stacks), per(open.stacks, idle.stacks))
	fmt.Fprintf(&b, "| goroutines (`go_goroutines`) | %d | %d | **%.1f** |\n", idle.goroutines, open.goroutines, float64(open.goroutines-idle.goroutines)/float64(n))
	return b.String()
}

// streamsLength is about how long a stream of the scenario stays open.
func streamsLength() time.Duration {
	ttft, _ := time.ParseDuration(streamsEngine["MODELPORT_SIM_TTFT"])
	itl, _ := time.ParseDuration(streamsEngine["MODELPORT_SIM_ITL"])
	return ttft + time.Duration(streamsMaxTokens-1)*itl
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// thousands writes n with a comma between thousands: 1,000.
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
