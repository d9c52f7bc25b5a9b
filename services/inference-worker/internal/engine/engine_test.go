package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/services/inference-worker/internal/engine"
)

// reserve finds n consecutive free ports on 127.0.0.1 and holds each with
// a listener, which the caller closes to free it.
func reserve(t *testing.T, n int) []net.Listener {
	t.Helper()
	for range 50 {
		first, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns := []net.Listener{first}
		base := first.Addr().(*net.TCPAddr).Port
		for i := 1; i < n; i++ {
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(base+i)))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		if len(lns) == n {
			t.Cleanup(func() {
				for _, ln := range lns {
					ln.Close()
				}
			})
			return lns
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	t.Fatalf("found no %d consecutive free ports", n)
	return nil
}

func port(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

func TestPortsListen(t *testing.T) {
	tests := []struct {
		name string
		// free are the indexes of the reserved ports to free before Listen;
		// the rest stay busy.
		free     []int
		ports    int // how many ports the range has
		wantPort int // index of the port Listen takes; -1: an error
	}{
		{name: "first free port", free: []int{0, 1}, ports: 2, wantPort: 0},
		{name: "busy port skipped", free: []int{1, 2}, ports: 3, wantPort: 1},
		{name: "two busy ports skipped", free: []int{2}, ports: 3, wantPort: 2},
		{name: "single port range", free: []int{0}, ports: 1, wantPort: 0},
		{name: "range exhausted", ports: 2, wantPort: -1},
		{name: "single busy port", ports: 1, wantPort: -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lns := reserve(t, tc.ports)
			for _, i := range tc.free {
				lns[i].Close()
			}
			p := engine.Ports{Host: "127.0.0.1", First: port(lns[0]), Last: port(lns[len(lns)-1])}
			ln, err := p.Listen()
			if tc.wantPort < 0 {
				if err == nil {
					ln.Close()
					t.Fatalf("Listen took port %d, want an error", port(ln))
				}
				want := strconv.Itoa(p.First) + "-" + strconv.Itoa(p.Last)
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name the range %s", err, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Listen: %v", err)
			}
			defer ln.Close()
			if got, want := port(ln), p.First+tc.wantPort; got != want {
				t.Errorf("port = %d, want %d", got, want)
			}
		})
	}
}

func TestPortsListenAny(t *testing.T) {
	p := engine.Ports{Host: "127.0.0.1"}
	a, err := p.Listen()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := p.Listen()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if port(a) == 0 || port(a) == port(b) {
		t.Errorf("ports %d and %d, want two distinct free ports", port(a), port(b))
	}
	if got, want := a.Addr().(*net.TCPAddr).IP.String(), "127.0.0.1"; got != want {
		t.Errorf("listening on %s, want %s", got, want)
	}
}

func TestSimulatorStart(t *testing.T) {
	tests := []struct {
		name      string
		advertise string
		wantHost  string
	}{
		{name: "listen host", wantHost: "127.0.0.1"},
		{name: "advertise host", advertise: "worker-7.internal", wantHost: "worker-7.internal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sim := &engine.Simulator{Ports: engine.Ports{Host: "127.0.0.1", Advertise: tc.advertise}}
			inst, err := sim.Start(context.Background(), engine.Spec{InstanceID: "i-1", ServedName: "u-a11ce0000001/chat", BaseModel: "qwen2.5-7b-instruct"})
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			defer inst.Stop(context.Background())
			ep := inst.Endpoint()
			if !strings.HasPrefix(ep, "http://"+tc.wantHost+":") || !strings.HasSuffix(ep, "/v1") {
				t.Errorf("endpoint = %q, want http://%s:<port>/v1", ep, tc.wantHost)
			}
			if got, want := inst.Engine(), "simulator"; got != want {
				t.Errorf("engine = %q, want %q", got, want)
			}
			if ev := <-inst.Events(); ev.State != engine.Ready {
				t.Errorf("first event %+v, want ready", ev)
			}
		})
	}
	if got, want := (&engine.Simulator{}).Name(), "simulator"; got != want {
		t.Errorf("Name = %q, want %q", got, want)
	}
}

func TestSimulatorServes(t *testing.T) {
	const served = "u-a11ce0000001/chat"
	sim := &engine.Simulator{Ports: engine.Ports{Host: "127.0.0.1"}}
	inst, err := sim.Start(context.Background(), engine.Spec{InstanceID: "i-1", ServedName: served, BaseModel: "qwen2.5-7b-instruct"})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if ev := <-inst.Events(); ev.State != engine.Ready {
		t.Fatalf("first event %+v, want ready", ev)
	}

	client := &http.Client{Timeout: 5 * time.Second}
	post := func(model string) (*http.Response, error) {
		body := `{"model":"` + model + `","messages":[{"role":"user","content":"Say hello"}],"max_tokens":8}`
		return client.Post(inst.Endpoint()+"/chat/completions", "application/json", bytes.NewBufferString(body))
	}

	tests := []struct {
		name       string
		model      string
		wantStatus int
	}{
		{name: "served name", model: served, wantStatus: http.StatusOK},
		{name: "another name", model: "u-a11ce0000001/other", wantStatus: http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := post(tc.model)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if got, want := resp.StatusCode, tc.wantStatus; got != want {
				t.Fatalf("status = %d, want %d", got, want)
			}
			if tc.wantStatus != http.StatusOK {
				return
			}
			var cc struct {
				Object  string `json:"object"`
				Model   string `json:"model"`
				Choices []struct {
					Message struct{ Role, Content string }
				} `json:"choices"`
				Usage *struct {
					PromptTokens     int `json:"prompt_tokens"`
					CompletionTokens int `json:"completion_tokens"`
					TotalTokens      int `json:"total_tokens"`
				} `json:"usage"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&cc); err != nil {
				t.Fatal(err)
			}
			if cc.Object != "chat.completion" || cc.Model != served {
				t.Errorf("object %q model %q, want chat.completion and %q", cc.Object, cc.Model, served)
			}
			if len(cc.Choices) != 1 || cc.Choices[0].Message.Role != "assistant" || cc.Choices[0].Message.Content == "" {
				t.Errorf("choices = %+v, want one assistant message", cc.Choices)
			}
			if cc.Usage == nil || cc.Usage.PromptTokens <= 0 || cc.Usage.CompletionTokens <= 0 || cc.Usage.CompletionTokens > 8 ||
				cc.Usage.TotalTokens != cc.Usage.PromptTokens+cc.Usage.CompletionTokens {
				t.Errorf("usage = %+v, want counted tokens within max_tokens", cc.Usage)
			}
		})
	}

	if err := inst.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if ev, ok := <-inst.Events(); ok {
		t.Errorf("event %+v after Stop, want the channel closed", ev)
	}
	client.CloseIdleConnections()
	if resp, err := post(served); err == nil {
		resp.Body.Close()
		t.Errorf("a request after Stop got status %d, want a failure", resp.StatusCode)
	}
}

func TestSimulatorStartNoPort(t *testing.T) {
	lns := reserve(t, 1)
	sim := &engine.Simulator{Ports: engine.Ports{Host: "127.0.0.1", First: port(lns[0]), Last: port(lns[0])}}
	inst, err := sim.Start(context.Background(), engine.Spec{InstanceID: "i-1", ServedName: "m"})
	if err == nil {
		inst.Stop(context.Background())
		t.Fatal("Start succeeded with no free port")
	}
	if !strings.Contains(err.Error(), "i-1") {
		t.Errorf("error %q does not name the instance", err)
	}
}
