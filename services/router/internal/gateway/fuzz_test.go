package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// The fuzz tests run their seeds and the corpus in testdata/fuzz with a
// plain go test; go test -fuzz=FuzzChatRequest (or FuzzSSE) searches for
// more.

// fuzzMaxImage is the image limit the fuzz tests parse with: small, so
// the fuzzer reaches it.
const fuzzMaxImage = 64

// tinyPNG is what the fake fetcher answers: a PNG signature and no more,
// which is all the gateway looks at.
var tinyPNG = []byte("\x89PNG\r\n\x1a\n")

type fuzzFetcher struct{}

func (fuzzFetcher) Fetch(_ context.Context, url string, limit int64, _ func(int64) error) (string, []byte, error) {
	if strings.Contains(url, "refuse") {
		return "", nil, errs.E(errs.Invalid, "refused")
	}
	return "image/png", tinyPNG, nil
}

// FuzzChatRequest checks the gateway's reading of a chat request: it never
// panics; every refusal is errs.Invalid, naming the parameter at fault
// once the body is a UTF-8 JSON object; an accepted request has a model
// and messages; and once its image URLs are fetched, the body the engine
// gets, read as an engine reads JSON (exact names, the last of duplicate
// keys), has no image URL left for the engine to fetch.
func FuzzChatRequest(f *testing.F) {
	for _, seed := range []string{
		`{"model":"u-a/chat","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"u-a/chat","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"what?"},{"type":"image_url","image_url":{"url":"https://example.com/a.png","detail":"low"}}]}],"stream":true,"stream_options":{"include_usage":true}}`,
		`{"model":"u-a/chat","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}]}`,
		`{"model":"u-a/chat","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBOR!w0KGgo="}}]}]}`,
		`{"model":"u-a/chat","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://refuse.example/a.png"}}]}]}`,
		`{"model":"u-a/chat","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://169.254.169.254/"}}]}],"Messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"u-a/chat","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://a/"},"image_url":{"detail":"low"}}]}]}`,
		`{"model":"u-a/chat","messages":[{"role":"user","content":"hi"}],"temperature":"hot","max_tokens":1.5}`,
		`{"model":"u-a/chat","messages":[{"role":5}]}`,
		`{"model":"u-a/chat","messages":[7]}`,
		`{"model":"u-a/chat","messages":[{"role":"user","content":[1]}]}`,
		`{"model":"u-a/chat","messages":[{"role":"user","content":"hi"}],"stop":["a",1],"tool_choice":7}`,
		`{"model":"u-a/chat","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"Name":"f"}}]}`,
		`{"model":"u-a/chat","messages":[{"role":"user","content":"caf` + "\xe9" + `"}]}`,
		`{"model":"u-a/chat","messages":[{"role":"user","content":"\ud800"}]}`,
		`[]`, ``, `{`, `null`, `{"model":null,"messages":null}`,
	} {
		f.Add([]byte(seed))
	}
	g := &Gateway{Images: fuzzFetcher{}, MaxImageBytes: fuzzMaxImage, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := parseChat(body, fuzzMaxImage)
		if err != nil {
			checkInvalid(t, body, err)
			return
		}
		if p.Model == "" || len(p.Messages) == 0 || len(p.parts) != len(p.Messages) {
			t.Fatalf("accepted without a model or messages: %+v", p)
		}
		images, err := g.fetchImages(context.Background(), body, p, "o1", nil)
		if err != nil {
			if e, ok := errs.As(err); !ok || e.Kind != errs.Invalid || e.Param == "" {
				t.Fatalf("inlining images: %v, want errs.Invalid with a param", err)
			}
			return
		}
		out, err := upstreamBody(body, p, images, nil)
		if err != nil {
			t.Fatalf("the body for the engine: %v", err)
		}
		if _, err := parseChat(out, fuzzMaxImage); err != nil {
			t.Fatalf("the body for the engine does not parse: %v\n%s", err, out)
		}
		if u, ok := remoteImageForEngine(out); ok {
			t.Fatalf("the engine would fetch %q from\n%s", u, out)
		}
	})
}

// checkInvalid fails unless err is errs.Invalid, with a param when body
// is a UTF-8 JSON object.
func checkInvalid(t *testing.T, body []byte, err error) {
	t.Helper()
	e, ok := errs.As(err)
	if !ok || e.Kind != errs.Invalid {
		t.Fatalf("refused with %v (kind %v), want errs.Invalid", err, errs.KindOf(err))
	}
	var obj map[string]json.RawMessage
	if utf8.Valid(body) && json.Unmarshal(body, &obj) == nil && obj != nil && e.Param == "" {
		t.Fatalf("a JSON object refused without a param: %v", err)
	}
}

// remoteImageForEngine reads body as an engine does (exact key names; of
// duplicate keys, the last) and returns the first http(s) URL of an
// image_url part, which the engine would fetch.
func remoteImageForEngine(body []byte) (string, bool) {
	var top map[string]json.RawMessage
	var msgs []map[string]json.RawMessage
	if json.Unmarshal(body, &top) != nil || json.Unmarshal(top["messages"], &msgs) != nil {
		return "", false
	}
	for _, m := range msgs {
		var parts []map[string]json.RawMessage
		if json.Unmarshal(m["content"], &parts) != nil {
			continue
		}
		for _, part := range parts {
			var typ string
			var image struct {
				URL string `json:"url"`
			}
			var raw map[string]json.RawMessage
			if json.Unmarshal(part["type"], &typ) != nil || typ != "image_url" ||
				json.Unmarshal(part["image_url"], &raw) != nil || json.Unmarshal(raw["url"], &image.URL) != nil {
				continue
			}
			if isRemote([]byte(image.URL)) {
				return image.URL, true
			}
		}
	}
	return "", false
}

// chunkedReader reads b at most n bytes at a time, as a network does.
type chunkedReader struct {
	b []byte
	n int
}

func (r *chunkedReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), r.n)], r.b)
	r.b = r.b[k:]
	return k, nil
}

// readEvents reads events from lr until it fails, and returns them with
// the error that ended the reading.
func readEvents(lr *lineReader) ([][]byte, error) {
	var got [][]byte
	for {
		data, err := lr.event()
		if err != nil {
			return got, err
		}
		got = append(got, data)
	}
}

// referenceEvents reads a whole SSE body as lineReader should, the simple
// way, with lines over max+2 bytes (their line end included) or data over
// max bytes an error.
func referenceEvents(body []byte, max int) (out [][]byte, tooLarge bool) {
	var data []byte
	lines := bytes.SplitAfter(body, []byte("\n"))
	for _, raw := range lines {
		if len(raw) == 0 {
			continue
		}
		if len(raw) > max+2 {
			return out, true
		}
		line := bytes.TrimRight(raw, "\r\n")
		if len(line) == 0 {
			if data != nil {
				out, data = append(out, data), nil
			}
			continue
		}
		name, value, found := bytes.Cut(line, []byte(":"))
		if found && len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
		if string(name) != "data" {
			continue
		}
		if data == nil {
			data = []byte{}
		} else {
			data = append(data, '\n')
		}
		if len(data)+len(value) > max {
			return out, true
		}
		data = append(data, value...)
	}
	if data != nil { // cut off by the end of the body: still returned
		out = append(out, data)
	}
	return out, false
}

type fuzzPublisher struct {
	mu     sync.Mutex
	events []events.Event
}

func (p *fuzzPublisher) Publish(_ context.Context, ev events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, ev)
	return nil
}

// FuzzSSE checks the reading of an engine's stream: the events lineReader
// finds, read in chunks of any size, are exactly those of a simple
// reading of the whole body (so none is lost, split or joined), an event
// over the limit is an error rather than unbounded memory, and the chunks
// a Stream makes of them are JSON objects with Modelport's id and the
// access name, with one usage event at most when it closes.
func FuzzSSE(f *testing.F) {
	const chunk = `{"id":"e","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"a"}}]}`
	for _, seed := range []struct {
		body  string
		chunk uint8
		opts  uint8
	}{
		{"data: " + chunk + "\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n", 0, 1},
		{"data: " + chunk + "\r\n\r\n: keep-alive\r\n\r\ndata: [DONE]\r\n\r\n", 3, 0},
		{"event: message\nid: 7\nretry: 10\ndata: " + chunk + "\n\n", 1, 2},
		{"data:" + chunk + "\ndata\n\ndata: [DONE]", 5, 3},
		{"data: {\"a\":\ndata: 1}\n\ndata:\n\ndata\n\n", 2, 0},
		{"data: null\n\n", 0, 0},
		{"data: []\n\ndata: 7\n\n", 0, 0},
		{"data: {\"error\":{\"message\":\"boom\"}}\n\n", 0, 0},
		{"data: {\"choices\":null,\"usage\":null}\n\n", 0, 3},
		{"\n\n\r\n:\n" + strings.Repeat("x", 200) + "\n", 9, 0},
		{"data: " + strings.Repeat("y", 100) + "\n\n", 64, 0},
	} {
		f.Add([]byte(seed.body), seed.chunk, seed.opts)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := state.Service{ID: "s1", OwnerID: "o1", AccessName: "u-o1/chat"}
	f.Fuzz(func(t *testing.T, body []byte, chunk, opts uint8) {
		// The reader against the reference, with a small limit so the
		// fuzzer reaches it, in chunks of 1 to 64 bytes.
		const max = 96
		lr := newLineReader(&chunkedReader{b: body, n: int(chunk)%64 + 1})
		lr.max = max
		want, wantTooLarge := referenceEvents(body, max)
		got, err := readEvents(lr)
		if len(got) != len(want) {
			t.Fatalf("events %q, want %q", got, want)
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("event %d: %q, want %q", i, got[i], want[i])
			}
		}
		if tooLarge := errors.Is(err, errEventTooLarge); tooLarge != wantTooLarge || !tooLarge && !errors.Is(err, io.EOF) {
			t.Fatalf("ended with %v, want too large: %v", err, wantTooLarge)
		}

		// The whole stream through a Stream, at the real limit.
		all, _ := referenceEvents(body, maxEvent)
		pub := &fuzzPublisher{}
		g := &Gateway{pub: pub, log: log}
		s := &Stream{g: g, ctx: context.Background(), call: Call{Caller: auth.Key{ID: "k1"}}, svc: svc, id: "cmp-fuzz",
			up:    &upstream{body: io.NopCloser(nil), release: func() {}, fail: func() {}},
			opts:  streamOptions{IncludeUsage: opts&1 != 0, ContinuousUsageStats: opts&2 != 0},
			lines: newLineReader(bytes.NewReader(body))}
		for n := 0; ; n++ {
			out, err := s.Next()
			if err != nil {
				if errors.Is(err, io.EOF) != s.finished {
					t.Fatalf("Next: %v, finished %v", err, s.finished)
				}
				if !errors.Is(err, io.EOF) && errs.KindOf(err) != errs.Upstream {
					t.Fatalf("Next failed with %v (kind %v), want errs.Upstream", err, errs.KindOf(err))
				}
				break
			}
			var m map[string]json.RawMessage
			if json.Unmarshal(out, &m) != nil || m == nil || string(m["id"]) != `"cmp-fuzz"` || string(m["model"]) != `"u-o1/chat"` {
				t.Fatalf("chunk %d is not a chunk for the client: %s", n, out)
			}
			if n >= len(all) {
				t.Fatalf("more chunks than events")
			}
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if n := len(pub.events); n > 1 {
			t.Fatalf("%d usage events, want at most 1", n)
		}
	})
}
