package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
)

// TestUpstreamBody: the request for the engine is the client's bytes with
// the fetched images spliced in as data URLs and stream_options set, read
// as engines read JSON.
func TestUpstreamBody(t *testing.T) {
	img := []byte("\\x89PNG\\r\\n\\x1a\\nsome image bytes")
	dataURL := "data:image/png;base64," + base64.StdEncoding.EncodeToString(img)
	part := func(u string) string { return `{"type":"image_url","image_url":{"url":"` + u + `","detail":"low"}}` }
	tests := []struct {
		name string
		body string
		// wantOptions is the stream_options the engine reads ("" none).
		wantOptions string
		wantURLs    []string
	}{
		{name: "nothing to change", body: `{"model":"m","messages":[{"role":"user","content":"hi"}]}`},
		{name: "a stream without options", body: `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}`,
			wantOptions: streamOptionsUpstream},
		{name: "a stream with options", body: `{"model":"m","stream_options":{"include_usage":false},"messages":[{"role":"user","content":"hi"}],"stream":true}`,
			wantOptions: streamOptionsUpstream},
		{name: "options twice", body: `{"model":"m","stream_options":null,"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false} }`,
			wantOptions: streamOptionsUpstream},
		{name: "whitespace before the end", body: "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true \n }\n",
			wantOptions: streamOptionsUpstream},
		{name: "an image URL", body: `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"what?"},` + part("https://example.com/a.png") + `]}]}`,
			wantURLs: []string{dataURL}},
		{name: "escaped image URLs, a data URL kept, a stream", body: `{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[` +
			part(`https:\/\/example.com\/a.png`) + `,` + part("data:image/png;base64,AAAA") + `,` + part(`http://example.com/b.png?x=\u0031`) + `]}],"stream":true}`,
			wantOptions: streamOptionsUpstream, wantURLs: []string{dataURL, "data:image/png;base64,AAAA", dataURL}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(tc.body)
			p, err := parseChat(body, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			g := &Gateway{Images: staticFetcher{img}, MaxImageBytes: 1 << 20}
			hold := NewBudget(1 << 30).Hold()
			if err := hold.Grow(int64(len(body))); err != nil {
				t.Fatal(err)
			}
			images, err := g.fetchImages(context.Background(), body, p, "o1", hold)
			if err != nil {
				t.Fatal(err)
			}
			out, err := upstreamBody(body, p, images, hold)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantOptions == "" && len(tc.wantURLs) == 0 && &out[0] != &body[0] {
				t.Errorf("a body needing no change was copied")
			}
			if got := hold.Bytes(); got != int64(len(out)) {
				t.Errorf("the hold has %d bytes, want the new body's %d", got, len(out))
			}
			var engine struct {
				StreamOptions json.RawMessage `json:"stream_options"`
				Messages      []struct {
					Content json.RawMessage `json:"content"`
				} `json:"messages"`
			}
			if err := json.Unmarshal(out, &engine); err != nil {
				t.Fatalf("the engine cannot read %s: %v", out, err)
			}
			if string(engine.StreamOptions) != tc.wantOptions {
				t.Errorf("stream_options %s, want %s", engine.StreamOptions, tc.wantOptions)
			}
			var urls []string
			for _, m := range engine.Messages {
				var parts []struct {
					ImageURL struct {
						URL    string `json:"url"`
						Detail string `json:"detail"`
					} `json:"image_url"`
				}
				if json.Unmarshal(m.Content, &parts) != nil {
					continue
				}
				for _, p := range parts {
					if p.ImageURL.URL != "" {
						urls = append(urls, p.ImageURL.URL)
						if p.ImageURL.Detail != "low" {
							t.Errorf("detail %q lost", p.ImageURL.Detail)
						}
					}
				}
			}
			if !reflect.DeepEqual(urls, tc.wantURLs) {
				t.Errorf("image URLs %q, want %q", urls, tc.wantURLs)
			}
			// Everything else is as the client sent it.
			var sent, got map[string]json.RawMessage
			_ = json.Unmarshal(body, &sent)
			_ = json.Unmarshal(out, &got)
			for k, v := range sent {
				if k != "messages" && k != "stream_options" && string(got[k]) != string(v) {
					t.Errorf("%s: %s, want %s", k, got[k], v)
				}
			}
		})
	}
}

// staticFetcher answers every URL with the same PNG.
type staticFetcher struct{ png []byte }

func (f staticFetcher) Fetch(_ context.Context, _ string, limit int64, reserve func(int64) error) (string, []byte, error) {
	if reserve != nil {
		if err := reserve(int64(len(f.png))); err != nil {
			return "", nil, err
		}
	}
	return "image/png", append([]byte(nil), f.png...), nil
}

// TestBudget: holds take bytes while there is room, give them back once,
// and a hold that cannot grow is refused with Unavailable and Retry-After.
func TestBudget(t *testing.T) {
	b := NewBudget(100)
	h1, h2 := b.Hold(), b.Hold()
	if err := h1.Grow(60); err != nil {
		t.Fatal(err)
	}
	err := h2.Grow(41)
	if e, ok := errs.As(err); !ok || e.Kind != errs.Unavailable || e.RetryAfter <= 0 {
		t.Fatalf("over the budget: %v, want Unavailable with Retry-After", err)
	}
	if err := h2.Grow(40); err != nil {
		t.Fatal(err)
	}
	h1.Shrink(20)
	if got := b.Used(); got != 80 {
		t.Errorf("used %d, want 80", got)
	}
	h1.Release()
	h1.Release()
	if got := b.Used(); got != 40 {
		t.Errorf("used %d after a release twice, want 40", got)
	}
	if err := h1.Grow(10); err != nil || b.Used() != 40 {
		t.Errorf("a released hold grew: %v, used %d", err, b.Used())
	}
	h2.Release()
	if got := b.Used(); got != 0 {
		t.Errorf("used %d, want 0", got)
	}
	var none *Budget
	h := none.Hold()
	if err := h.Grow(1 << 40); err != nil {
		t.Errorf("no budget: %v", err)
	}
	h.Release()

	// Concurrent holds never take more than the budget together.
	b = NewBudget(1000)
	var wg sync.WaitGroup
	var mu sync.Mutex
	peak := int64(0)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := b.Hold()
			for range 100 {
				if h.Grow(7) == nil {
					mu.Lock()
					peak = max(peak, b.Used())
					mu.Unlock()
				}
			}
			h.Release()
		}()
	}
	wg.Wait()
	if peak > 1000 || b.Used() != 0 {
		t.Errorf("peak %d of 1000, %d left", peak, b.Used())
	}
}

// TestFetchSlots: an owner holds at most its share of the slots, others
// get the rest, and a slot freed goes to a waiter.
func TestFetchSlots(t *testing.T) {
	s := newFetchSlots(4, 2)
	ctx := context.Background()
	a1, _ := s.acquire(ctx, "a")
	a2, _ := s.acquire(ctx, "a")
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := s.acquire(short, "a"); err == nil {
		t.Fatal("a third slot for one owner")
	}
	b1, err := s.acquire(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		r, err := s.acquire(ctx, "a")
		if err == nil {
			r()
		}
		got <- err
	}()
	time.Sleep(10 * time.Millisecond)
	a1()
	a1() // once only
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	a2()
	b1()
	if s.used != 0 || len(s.owners) != 0 {
		t.Errorf("used %d, owners %v after every release", s.used, s.owners)
	}
}

// TestUsageIn finds the engine's usage at the end of an answer too large
// to parse.
func TestUsageIn(t *testing.T) {
	tail := []byte(`xxxx"},"logprobs":{"usage":"a token"}}],"usage" : {"prompt_tokens":9,"completion_tokens":70000,"total_tokens":70009},"x":1}`)
	u, ok := usageIn(tail)
	if !ok || u != (Usage{PromptTokens: 9, CompletionTokens: 70000, TotalTokens: 70009}) {
		t.Errorf("usageIn = %+v, %v", u, ok)
	}
	if _, ok := usageIn([]byte(`"content":"xxxx`)); ok {
		t.Error("usage found where there is none")
	}
}

// TestHasContent: the role chunk and a finish chunk carry no content.
func TestHasContent(t *testing.T) {
	for _, tc := range []struct {
		choices string
		want    bool
	}{
		{`[{"index":0,"delta":{"role":"assistant","content":""}}]`, false},
		{`[{"index":0,"delta":{"role":"assistant"}}]`, false},
		{`[{"index":0,"delta":{},"finish_reason":"stop"}]`, false},
		{`[{"index":0,"delta":{"content":null,"tool_calls":[]}}]`, false},
		{`[{"index":0,"delta":{"content":"a"}}]`, true},
		{`[{"index":0,"delta":{"reasoning_content":"hm"}}]`, true},
		{`[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]`, true},
		{`[{"index":0,"delta":{}},{"index":1,"delta":{"content":"b"}}]`, true},
		{`7`, false},
	} {
		if got := hasContent(json.RawMessage(tc.choices)); got != tc.want {
			t.Errorf("hasContent(%s) = %v, want %v", tc.choices, got, tc.want)
		}
	}
}

// TestPromptTokens counts as the simulator does: 3, and per message 4
// plus its role and its text.
func TestPromptTokens(t *testing.T) {
	body := []byte(`{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hello"},{"type":"text","text":" world"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}`)
	p, err := parseChat(body, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := 3 + (4 + countTokens("system") + countTokens("Be brief.")) + (4 + countTokens("user") + countTokens("Hello world"))
	if got := p.prompt.tokens(); got != want || want != 3+4+1+3+4+1+2 {
		t.Errorf("prompt tokens %d, want %d", got, want)
	}
	if n := countTokens(strings.Repeat(" hello", 1000)); n != 1000 {
		t.Errorf("1000 hellos are %d tokens", n)
	}
}

// TestParseDoesNotCopyImages: reading a request with a large inline image
// allocates a small fraction of its size: content is read where it sits.
func TestParseDoesNotCopyImages(t *testing.T) {
	img := make([]byte, 3<<20)
	body := []byte(`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"what is it?"},` +
		`{"type":"image_url","image_url":{"url":"data:image/png;base64,` + base64.StdEncoding.EncodeToString(img) + `"}}]}],"stream":true}`)
	if _, err := parseChat(body, 20<<20); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	p, err := parseChat(body, 20<<20)
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("a %d MiB request: %d KiB allocated to read it", len(body)>>20, allocated>>10)
	if allocated > uint64(len(body))/10 {
		t.Errorf("reading a %d MiB request allocated %d MiB", len(body)>>20, allocated>>20)
	}
	runtime.KeepAlive(p)
}
