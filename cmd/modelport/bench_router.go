package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The router's memory under a hostile image workload: a router process of
// its own (bin/router), set up as the Kubernetes manifest sets one up
// (MODELPORT_REQUEST_MEMORY 192 MiB, GOMEMLIMIT 448 MiB, in a 512 MiB
// container), against the platform's NATS and an image-understanding
// service on the simulator. Its resident memory is sampled under text
// requests (the baseline) and under requests that each name eight 4 MiB
// images on a fast image server, both at the same concurrency.

const (
	hostileImages      = 8   // image URLs per request, the most the router fetches
	hostileImageSide   = 860 // pixels: 860x860 RGBA, 3 MB of PNG: eight fit a 32 MiB request inline
	hostileConcurrency = 32  // clients at once
	hostileRequests    = 64  // requests per workload
	routerMemoryLimit  = 512 << 20
)

// hostileSettings are the router's settings for the scenario: the
// Kubernetes manifest's, and what the bench's machine needs.
var hostileSettings = []string{
	"MODELPORT_REQUEST_MEMORY=201326592",
	"GOMEMLIMIT=448MiB",
	"MODELPORT_ALLOW_PRIVATE_IMAGE_URLS=1", // the image server is on loopback
	"MODELPORT_IMAGE_FETCH_TIMEOUT=60s",    // a loaded machine fetches slowly
	"MODELPORT_LOG_LEVEL=error",
}

// hostileResult is one workload's outcome.
type hostileResult struct {
	name              string
	requests          int
	answered, busy    int
	failed            int
	firstFailure      string
	peakRSS, startRSS int64
	elapsed           time.Duration
}

// benchHostileImages runs the scenario and returns its section of the
// report; a scenario that cannot run says why instead.
func benchHostileImages(ctx context.Context, c *http.Client, p *platform, key, routerBin string) string {
	var b strings.Builder
	b.WriteString("\n## Router memory under a hostile image workload\n\n")
	results, err := runHostileImages(ctx, c, p, key, routerBin)
	if err != nil {
		fmt.Fprintf(&b, "Not measured: %v.\n", err)
		return b.String()
	}
	fmt.Fprintf(&b, "A router process of its own, set up as the Kubernetes manifest sets one up (`%s`), against the platform's NATS and an image-understanding service on the simulator. ",
		strings.Join(hostileSettings[:2], "`, `"))
	fmt.Fprintf(&b, "%d clients at once send %d chat requests in all: the baseline with text only, the hostile workload naming %d image URLs of %.1f MiB each (%.0f MiB of images per request, a request body of about 1 KB) on a fast image server on the same machine, which the router fetches and sends to the engine inline. ",
		hostileConcurrency, hostileRequests, hostileImages, float64(hostileImageBytes())/(1<<20), float64(hostileImages*hostileImageBytes())/(1<<20))
	b.WriteString("Resident memory (VmRSS) of the router process is sampled every 10 ms; the peak is the larger of the samples and VmHWM. ")
	b.WriteString("Requests past the router's byte budget are answered 503 with `Retry-After` (the clients here do not retry). ")
	fmt.Fprintf(&b, "The container's memory limit is %d MiB.\n\n", routerMemoryLimit>>20)
	b.WriteString("| workload | requests | answered | told to retry (503) | failed | router RSS before | **router RSS peak** | wall time |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range results {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %.0f MiB | **%.0f MiB** | %.1f s |\n", r.name, r.requests, r.answered, r.busy, r.failed,
			float64(r.startRSS)/(1<<20), float64(r.peakRSS)/(1<<20), r.elapsed.Seconds())
	}
	base, hostile := results[0], results[len(results)-1]
	fmt.Fprintf(&b, "\nPeak under the hostile workload: %.2f× the text baseline's, %.0f%% of the container's limit.",
		float64(hostile.peakRSS)/float64(base.peakRSS), 100*float64(hostile.peakRSS)/routerMemoryLimit)
	for _, r := range results {
		if r.firstFailure != "" {
			fmt.Fprintf(&b, " First failure of %s: %s.", r.name, r.firstFailure)
		}
	}
	b.WriteString("\n")
	return b.String()
}

func hostileImageBytes() int {
	return len(hostileImage())
}

// hostileImage is a PNG of random pixels, so it does not compress: about
// 4 MiB.
var hostileImage = sync.OnceValue(func() []byte {
	img := image.NewRGBA(image.Rect(0, 0, hostileImageSide, hostileImageSide))
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range img.Pix {
		img.Pix[i] = byte(rnd.Uint32())
	}
	var buf bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.NoCompression}
	if err := enc.Encode(&buf, img); err != nil {
		panic(err)
	}
	return buf.Bytes()
})

func runHostileImages(ctx context.Context, c *http.Client, p *platform, key, routerBin string) ([]hostileResult, error) {
	routerBin, err := findRouterBinary(routerBin)
	if err != nil {
		return nil, err
	}
	model, err := benchDeploy(ctx, c, p.BaseURL, key, "bench-vision", "qwen2-vl-7b-instruct", "image-understanding")
	if err != nil {
		return nil, err
	}
	img := hostileImage()
	images := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Content-Length", strconv.Itoa(len(img)))
		_, _ = w.Write(img)
	}))
	defer images.Close()

	router, err := startRouterProcess(ctx, p, routerBin, hostileSettings)
	if err != nil {
		return nil, err
	}
	defer router.stop()
	base, pid := router.base, router.cmd.Process.Pid
	// The router learns of the instance through its watch, at start.
	text := func(n int) []byte {
		b, _ := json.Marshal(map[string]any{"model": model, "max_tokens": 16,
			"messages": []map[string]string{{"role": "user", "content": fmt.Sprintf("Describe request %d in a few words.", n)}}})
		return b
	}
	hostile := func(n int) []byte {
		parts := []map[string]any{{"type": "text", "text": "What do these show?"}}
		for i := range hostileImages {
			parts = append(parts, map[string]any{"type": "image_url", "image_url": map[string]string{"url": fmt.Sprintf("%s/img/%d-%d.png", images.URL, n, i)}})
		}
		b, _ := json.Marshal(map[string]any{"model": model, "max_tokens": 16, "messages": []map[string]any{{"role": "user", "content": parts}}})
		return b
	}
	// A warm-up, so the baseline is a router that has served.
	if _, err := hostileLoad(ctx, c, base, key, pid, "warm-up", 16, 4, text, false); err != nil {
		return nil, err
	}
	var out []hostileResult
	for _, w := range []struct {
		name string
		body func(int) []byte
	}{{"text (baseline)", text}, {fmt.Sprintf("%d image URLs per request", hostileImages), hostile}} {
		// VmHWM, the peak since the router started, is this workload's
		// only for the last and heaviest.
		r, err := hostileLoad(ctx, c, base, key, pid, w.name, hostileRequests, hostileConcurrency, w.body, len(out) == 1)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if out[0].answered == 0 || out[1].answered == 0 {
		return nil, fmt.Errorf("no request answered (%+v); router log: %s", out, router.logs.String())
	}
	return out, nil
}

// hostileLoad sends n requests from conc clients and samples the router's
// resident memory meanwhile; withHWM counts the process's VmHWM in the
// peak.
func hostileLoad(ctx context.Context, c *http.Client, base, key string, pid int, name string, n, conc int, body func(int) []byte, withHWM bool) (hostileResult, error) {
	r := hostileResult{name: name, requests: n}
	var err error
	if r.startRSS, err = procMemory(pid, "VmRSS"); err != nil {
		return r, err
	}
	var peak atomic.Int64
	peak.Store(r.startRSS)
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			if rss, err := procMemory(pid, "VmRSS"); err == nil && rss > peak.Load() {
				peak.Store(rss)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	var mu sync.Mutex
	next := make(chan int)
	var wg sync.WaitGroup
	started := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				status, msg := benchPost(ctx, c, base+"/v1/chat/completions", key, body(i))
				mu.Lock()
				switch {
				case status == 200:
					r.answered++
				case status == 503:
					r.busy++
				default:
					r.failed++
					if r.firstFailure == "" {
						r.firstFailure = fmt.Sprintf("%d %s", status, msg)
					}
				}
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	r.elapsed = time.Since(started)
	close(stop)
	<-sampled
	r.peakRSS = peak.Load()
	if withHWM {
		hwm, err := procMemory(pid, "VmHWM")
		if err != nil {
			return r, err
		}
		r.peakRSS = max(r.peakRSS, hwm)
	}
	return r, nil
}

// benchPost posts body and returns the status and, for a failure, the
// start of the answer.
func benchPost(ctx context.Context, c *http.Client, url, key string, body []byte) (int, string) {
	req, err := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, string(b)
}

// procMemory reads a memory figure of /proc/<pid>/status, in bytes.
func procMemory(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// waitHealthy waits for a service's /healthz to answer 200.
func waitHealthy(ctx context.Context, c *http.Client, base string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/healthz", nil)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not healthy within 30s (%v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// benchDeploy deploys a one-instance service of model for task and returns
// its access name once its instance is ready.
func benchDeploy(ctx context.Context, c *http.Client, base, key, name, model, task string) (string, error) {
	var created struct {
		ID         string `json:"id"`
		AccessName string `json:"access_name"`
	}
	if err := benchCall(ctx, c, "POST", base+"/api/v1/services", key, map[string]any{"name": name, "base_model": model, "task": task, "instances": 1}, &created); err != nil {
		return "", err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var s struct {
			ReadyInstances int `json:"ready_instances"`
		}
		if err := benchCall(ctx, c, "GET", base+"/api/v1/services/"+created.ID, key, nil, &s); err != nil {
			return "", err
		}
		if s.ReadyInstances == 1 {
			return created.AccessName, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "", fmt.Errorf("service %s not ready in 30s", name)
}
