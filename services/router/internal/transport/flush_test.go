package transport

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// flushCounter counts the flushes of the answers it wraps.
type flushCounter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (f flushCounter) Flush() {
	f.n.Add(1)
	http.NewResponseController(f.ResponseWriter).Flush()
}

func (f flushCounter) Unwrap() http.ResponseWriter { return f.ResponseWriter }

// TestStreamFlushesWhenItWaitsForTheEngine: a stream's events reach the
// client before the router waits for the engine's next ones (an engine
// that sends its next chunk only once the client has the first would
// otherwise wait forever), and the events an engine sends at once go to
// the client in one flush, not one each.
func TestStreamFlushesWhenItWaitsForTheEngine(t *testing.T) {
	var flushes atomic.Int64
	r := newRig(t, rigOptions{wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			h.ServeHTTP(flushCounter{w, &flushes}, req)
		})
	}})
	const burst = 20
	chunk := func(content string) string {
		return "data: " + `{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"` + content + `"},"finish_reason":null}]}` + "\n\n"
	}
	clientHasFirst := make(chan struct{})
	var waitedInVain atomic.Bool
	e := newFakeEngine(t, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, chunk("first"))
		w.(http.Flusher).Flush()
		select {
		case <-clientHasFirst:
		case <-time.After(5 * time.Second):
			waitedInVain.Store(true)
		}
		var b strings.Builder
		for i := range burst {
			b.WriteString(chunk(fmt.Sprint(i)))
		}
		b.WriteString("data: " + `{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":21,"total_tokens":24}}` + "\n\ndata: [DONE]\n\n")
		fmt.Fprint(w, b.String())
	})
	r.instance(chatService, "i-a", e.URL)

	body := `{"model":"` + chatService.AccessName + `","messages":[{"role":"user","content":"hi"}],"stream":true}`
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, r.srv.URL+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+r.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	var events []string
	for lines.Scan() {
		line, ok := strings.CutPrefix(lines.Text(), "data: ")
		if !ok {
			continue
		}
		if len(events) == 0 {
			close(clientHasFirst)
		}
		events = append(events, line)
	}
	if err := lines.Err(); err != nil {
		t.Fatal(err)
	}
	if waitedInVain.Load() {
		t.Error("the client did not have the first chunk while the router waited for the engine's next")
	}
	if len(events) == 0 {
		t.Fatal("no events reached the client")
	}
	if len(events) != burst+2 || !strings.Contains(events[0], `"first"`) || events[len(events)-1] != "[DONE]" {
		t.Fatalf("got %d events (%q ... %q), want the first chunk, %d more and [DONE]", len(events), events[0], events[len(events)-1], burst)
	}
	// The first chunk, the burst (one flush, or a few should the
	// engine's write reach the router in parts), and the end.
	if n := flushes.Load(); n > 6 {
		t.Errorf("%d flushes for %d events sent in two writes by the engine; want a few", n, len(events))
	}
}
