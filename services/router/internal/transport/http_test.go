package transport

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/modelport/modelport/services/router/internal/ratelimit"
	"github.com/modelport/modelport/services/router/internal/routing"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const owner = "0a0b0c0d0e0f"

var (
	chatService = state.Service{
		ID: "s-chat", OwnerID: owner, Name: "chat", AccessName: "u-" + owner + "/chat",
		BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Engine: "simulator", Instances: 1,
		Status: state.StatusRunning,
	}
	visionService = state.Service{
		ID: "s-vision", OwnerID: owner, Name: "vision", AccessName: "u-" + owner + "/vision",
		BaseModel: "qwen2-vl-7b-instruct", Task: state.TaskImageUnderstanding, Engine: "simulator", Instances: 1,
		Status: state.StatusRunning,
	}
	drawService = state.Service{
		ID: "s-draw", OwnerID: owner, Name: "draw", AccessName: "u-" + owner + "/draw",
		BaseModel: "stable-diffusion-xl", Task: state.TaskImageGeneration, Engine: "simulator", Instances: 1,
		Status: state.StatusRunning,
	}
	otherService = state.Service{
		ID: "s-other", OwnerID: "ffffffffffff", Name: "chat", AccessName: "u-ffffffffffff/chat",
		BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Engine: "simulator", Instances: 1,
		Status: state.StatusRunning,
	}
)

// engineCompletion is the engine's answer to every chat request.
const engineCompletion = `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],` +
	`"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}`

// recordingPublisher records the usage events the gateway publishes.
type recordingPublisher struct {
	mu     sync.Mutex
	events []events.Event
}

func (p *recordingPublisher) Publish(_ context.Context, ev events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, ev)
	return nil
}

func (p *recordingPublisher) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.events)
}

// router is the real OpenAI handler over a real JetStream (API keys,
// image store), with an engine that records what reaches it.
type router struct {
	srv    *httptest.Server
	pub    *recordingPublisher
	key    string // a user key of owner
	second string // another key of owner
	// revoked was a key of owner until it was revoked.
	revoked string

	mu     sync.Mutex
	bodies [][]byte // what the engine received
	// streamDelay, when set, is how long the engine takes between chunks
	// of a streamed answer.
	streamDelay time.Duration
}

type routerOptions struct {
	limits       ratelimit.Config
	clock        func() time.Time
	allowPrivate bool
	bodyTimeout  time.Duration
}

func newRouter(t *testing.T, o routerOptions) *router {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// The router's parts run as its NATS identity; the test stores keys
	// as the test admin, as the deployer would.
	ns := natstest.New(t)
	bus := ns.Bus(t, access.Router)
	admin := auth.NewKeyring(ns.Bus(t, natstest.Admin).KV(state.BucketAPIKeys))

	rt := &router{pub: &recordingPublisher{}}
	engine := httptest.NewServer(http.HandlerFunc(rt.engine))
	t.Cleanup(engine.Close)

	table := routing.NewTable()
	for _, s := range []state.Service{chatService, visionService, drawService, otherService} {
		table.PutService(s)
		table.PutInstance(state.Instance{ID: "i-" + s.ID, ServiceID: s.ID, WorkerID: "w1", Engine: "simulator",
			Endpoint: engine.URL + "/v1", Status: state.InstanceReady})
	}
	g := gateway.New(table, routing.NewDemand(), NewEngineClient(10*time.Second, 0), rt.pub, quiet)
	limits := ratelimit.New(o.limits, o.clock)
	g.Limits = limits
	g.Images = NewImageFetcher(2*time.Second, o.allowPrivate)
	g.ImageFetchTimeout = 2 * time.Second
	images, err := NewImageStore(ctx, bus.JS, 1)
	if err != nil {
		t.Fatal(err)
	}

	keys := auth.NewKeyring(bus.KV(state.BucketAPIKeys))
	if err := keys.Follow(ctx); err != nil {
		t.Fatal(err)
	}
	newKey := func() (string, auth.Key) {
		secret := auth.NewSecret()
		k := auth.NewKey(secret, owner, false)
		if err := admin.Put(ctx, k); err != nil {
			t.Fatal(err)
		}
		return secret, k
	}
	rt.key, _ = newKey()
	rt.second, _ = newKey()
	var revoked auth.Key
	rt.revoked, revoked = newKey()
	if err := admin.Revoke(ctx, owner, revoked.ID); err != nil {
		t.Fatal(err)
	}
	// The keyring learns of the revocation through its watch.
	deadline := time.Now().Add(5 * time.Second)
	for _, err := keys.Verify(ctx, rt.revoked); err == nil; _, err = keys.Verify(ctx, rt.revoked) {
		if time.Now().After(deadline) {
			t.Fatal("the revoked key still verifies after 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	h := NewHandler(g, images, keys, limits, Options{BodyTimeout: o.bodyTimeout}, quiet)
	rt.srv = httptest.NewServer(httpx.Edge(h, "test", quiet))
	t.Cleanup(rt.srv.Close)
	return rt
}

// engine answers as an engine does: a chat completion, a stream, or images.
func (rt *router) engine(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rt.mu.Lock()
	rt.bodies = append(rt.bodies, body)
	delay := rt.streamDelay
	rt.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case strings.HasSuffix(r.URL.Path, "/images/generations"):
		_, _ = w.Write([]byte(`{"created":1,"data":[{"b64_json":"iVBORw0KGgo="}],"usage":{"input_tokens":3,"output_tokens":0}}`))
	case strings.Contains(string(body), `"stream":true`):
		w.Header().Set("Content-Type", "text/event-stream")
		for i, chunk := range []string{
			`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}`,
			`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"b"},"finish_reason":"stop"}]}`,
			`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}`,
			`[DONE]`,
		} {
			if i > 0 {
				time.Sleep(delay)
			}
			fmt.Fprintf(w, "data: %s\n\n", chunk)
			w.(http.Flusher).Flush()
		}
	default:
		_, _ = w.Write([]byte(engineCompletion))
	}
}

func (rt *router) engineBodies() [][]byte {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return slices.Clone(rt.bodies)
}

// post sends body to path with key as the bearer key ("" for none).
func (rt *router) post(t *testing.T, path, key string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, rt.srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := rt.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// checkError fails unless the answer is an OpenAI error with the status,
// type, code and param wanted ("" for a null param) and a message that
// contains msg.
func checkError(t *testing.T, resp *http.Response, body []byte, status int, typ, code, param, msg string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, body)
	}
	var e httpx.ErrorBody
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("body %s is not an OpenAI error: %v", body, err)
	}
	if e.Error.Type != typ {
		t.Errorf("type %q, want %q", e.Error.Type, typ)
	}
	if e.Error.Code == nil || *e.Error.Code != code {
		t.Errorf("code %v, want %q", e.Error.Code, code)
	}
	switch {
	case param == "" && e.Error.Param != nil:
		t.Errorf("param %q, want null", *e.Error.Param)
	case param != "" && (e.Error.Param == nil || *e.Error.Param != param):
		t.Errorf("param %v, want %q", e.Error.Param, param)
	}
	if !strings.Contains(e.Error.Message, msg) {
		t.Errorf("message %q does not contain %q", e.Error.Message, msg)
	}
}

func chatJSON(model, content string) string {
	return `{"model":"` + model + `","messages":[{"role":"user","content":` + content + `}]}`
}

// imageParts is a content array of a text part and an image part with url.
func imageParts(url string) string {
	return `[{"type":"text","text":"what is it?"},{"type":"image_url","image_url":{"url":"` + url + `"}}]`
}

// TestBadInputs sends the real handler what clients get wrong. Each gets
// its OpenAI error, and none reaches an engine or is billed.
func TestBadInputs(t *testing.T) {
	rt := newRouter(t, routerOptions{bodyTimeout: 10 * time.Second})
	images := newImageServer(t, http.NewServeMux()) // must never be asked
	chat, vision := chatService.AccessName, visionService.AccessName
	const (
		invalid  = "invalid_request_error"
		authErr  = "authentication_error"
		notFound = "not_found_error"
	)
	huge := `{"model":"` + chat + `","messages":[{"role":"user","content":"` + strings.Repeat("a", MaxBody) + `"}]}`
	for _, tc := range []struct {
		name             string
		path, key, body  string
		status           int
		typ, code, param string
		msg              string
	}{
		{name: "huge body", body: huge, status: 413, typ: invalid, code: "too_large", msg: "larger than 33554432 bytes"},
		{name: "invalid UTF-8 in a string", body: chatJSON(chat, "\"caf\xe9\""), status: 400, typ: invalid, code: "invalid", msg: "not valid UTF-8 (first bad byte at offset"},
		{name: "invalid UTF-8 in a key", body: `{"model":"` + chat + `","messages":[{"role":"user","content":"hi"}],` + "\"\xff\":1}", status: 400, typ: invalid, code: "invalid", msg: "UTF-8"},
		{name: "not JSON", body: `{"model":`, status: 400, typ: invalid, code: "invalid", msg: "not valid JSON"},
		{name: "not an object", body: `[{"model":"x"}]`, status: 400, typ: invalid, code: "invalid", msg: "must be a JSON object"},
		{name: "empty body", body: ``, status: 400, typ: invalid, code: "invalid", msg: "must be a JSON object"},
		{name: "messages a string", body: `{"model":"` + chat + `","messages":"hi"}`, status: 400, typ: invalid, code: "invalid", param: "messages", msg: "expected array, got string"},
		{name: "temperature a string", body: `{"model":"` + chat + `","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}`, status: 400, typ: invalid, code: "invalid", param: "temperature", msg: "expected number"},
		{name: "max_tokens a fraction", body: `{"model":"` + chat + `","messages":[{"role":"user","content":"hi"}],"max_tokens":1.5}`, status: 400, typ: invalid, code: "invalid", param: "max_tokens"},
		{name: "stream a string", body: `{"model":"` + chat + `","messages":[{"role":"user","content":"hi"}],"stream":"yes"}`, status: 400, typ: invalid, code: "invalid", param: "stream", msg: "expected boolean"},
		{name: "model a number", body: `{"model":7,"messages":[{"role":"user","content":"hi"}]}`, status: 400, typ: invalid, code: "invalid", param: "model"},
		{name: "role a number", body: `{"model":"` + chat + `","messages":[{"role":"user","content":"hi"},{"role":5,"content":"x"}]}`, status: 400, typ: invalid, code: "invalid", param: "messages[1].role"},
		{name: "message a number", body: `{"model":"` + chat + `","messages":[7]}`, status: 400, typ: invalid, code: "invalid", param: "messages[0]", msg: "expected object"},
		{name: "content a number", body: chatJSON(chat, `42`), status: 400, typ: invalid, code: "invalid", param: "messages[0].content"},
		{name: "part type a number", body: chatJSON(vision, `[{"type":"text","text":"a"},{"type":7}]`), status: 400, typ: invalid, code: "invalid", param: "messages[0].content[1].type"},
		{name: "image_url a string", body: chatJSON(vision, `[{"type":"image_url","image_url":"https://example.com/a.png"}]`), status: 400, typ: invalid, code: "invalid", param: "messages[0].content[0].image_url"},
		{name: "a case-variant field", body: `{"model":"` + chat + `","messages":[{"role":"user","content":"hi"}],"Messages":[]}`, status: 400, typ: invalid, code: "invalid", param: "Messages", msg: "case-sensitive"},
		{name: "bad base64 in a data URL", body: chatJSON(vision, imageParts("data:image/png;base64,iVBOR!!w0KGgo=")), status: 400, typ: invalid, code: "invalid", param: "messages[0].content[1].image_url.url", msg: "not valid base64"},
		{name: "a data URL without base64", body: chatJSON(vision, imageParts("data:image/png,rawbytes")), status: 400, typ: invalid, code: "invalid", param: "messages[0].content[1].image_url.url", msg: "data:image/<type>;base64,<data>"},
		{name: "a data URL of text", body: chatJSON(vision, imageParts("data:text/plain;base64,aGk=")), status: 400, typ: invalid, code: "invalid", param: "messages[0].content[1].image_url.url", msg: "must hold an image"},
		{name: "an empty data URL", body: chatJSON(vision, imageParts("data:image/png;base64,")), status: 400, typ: invalid, code: "invalid", param: "messages[0].content[1].image_url.url", msg: "holds no image"},
		{name: "a file URL", body: chatJSON(vision, imageParts("file:///etc/passwd")), status: 400, typ: invalid, code: "invalid", param: "messages[0].content[1].image_url.url"},
		{name: "an image URL on loopback", body: chatJSON(vision, imageParts(images.URL+"/cat.png")), status: 400, typ: invalid, code: "invalid", param: "messages[0].content[1].image_url.url", msg: "not a public address"},
		{name: "cloud metadata", body: chatJSON(vision, imageParts("http://169.254.169.254/latest/meta-data/")), status: 400, typ: invalid, code: "invalid", param: "messages[0].content[1].image_url.url", msg: "not a public address"},
		{name: "an image to a text service", body: chatJSON(chat, imageParts("data:image/png;base64,iVBORw0KGgo=")), status: 400, typ: invalid, code: "invalid", param: "messages[0].content[1]", msg: "does not accept images"},
		{name: "unknown model", body: chatJSON("u-"+owner+"/nope", `"hi"`), status: 404, typ: notFound, code: "not_found", param: "model", msg: "does not exist"},
		{name: "another owner's model", body: chatJSON(otherService.AccessName, `"hi"`), status: 404, typ: notFound, code: "not_found", param: "model", msg: "does not exist"},
		{name: "revoked key", key: "revoked", body: chatJSON(chat, `"hi"`), status: 401, typ: authErr, code: "unauthorized", msg: "invalid API key"},
		{name: "unknown key", key: "mp-not-a-key", body: chatJSON(chat, `"hi"`), status: 401, typ: authErr, code: "unauthorized", msg: "invalid API key"},
		{name: "no key", key: "none", body: chatJSON(chat, `"hi"`), status: 401, typ: authErr, code: "unauthorized", msg: "missing API key"},
		{name: "image prompt a number", path: "/v1/images/generations", body: `{"model":"` + drawService.AccessName + `","prompt":5}`, status: 400, typ: invalid, code: "invalid", param: "prompt"},
		{name: "image generation, invalid UTF-8", path: "/v1/images/generations", body: `{"model":"` + drawService.AccessName + `","prompt":` + "\"\xc3\x28\"}", status: 400, typ: invalid, code: "invalid", msg: "UTF-8"},
		{name: "image generation, unknown model", path: "/v1/images/generations", body: `{"model":"u-` + owner + `/nope","prompt":"a cat"}`, status: 404, typ: notFound, code: "not_found", param: "model"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path
			if path == "" {
				path = "/v1/chat/completions"
			}
			key := rt.key
			switch tc.key {
			case "revoked":
				key = rt.revoked
			case "none":
				key = ""
			case "":
			default:
				key = tc.key
			}
			resp, body := rt.post(t, path, key, strings.NewReader(tc.body))
			checkError(t, resp, body, tc.status, tc.typ, tc.code, tc.param, tc.msg)
			if n := len(rt.engineBodies()); n != 0 {
				t.Errorf("the engine got %d requests, want none", n)
			}
			if n := rt.pub.count(); n != 0 {
				t.Errorf("%d usage events published, want none", n)
			}
		})
	}
	if n := images.hits.Load(); n != 0 {
		t.Errorf("the image server got %d requests, want none", n)
	}

	// The same router answers a good request, so the refusals above were
	// the inputs' doing.
	resp, body := rt.post(t, "/v1/chat/completions", rt.key, strings.NewReader(chatJSON(chat, `"hi"`)))
	if resp.StatusCode != 200 || len(rt.engineBodies()) != 1 || rt.pub.count() != 1 {
		t.Errorf("good request: status %d, %d engine calls, %d usage events; want 200, 1, 1 (body %s)",
			resp.StatusCode, len(rt.engineBodies()), rt.pub.count(), body)
	}
}

func TestImageURLsAreFetchedByTheRouter(t *testing.T) {
	img := pngBytes(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/cat.png", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(img)
	})
	images := newImageServer(t, mux)
	// The image server is on loopback: the operator allows private targets.
	rt := newRouter(t, routerOptions{allowPrivate: true})
	url := images.URL + "/cat.png"
	body := `{"model":"` + visionService.AccessName + `","messages":[{"role":"user","content":` +
		`[{"type":"text","text":"what is it?"},{"type":"image_url","image_url":{"url":"` + url + `","detail":"low"}}]}],"temperature":0.5}`
	resp, out := rt.post(t, "/v1/chat/completions", rt.key, strings.NewReader(body))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	if images.hits.Load() != 1 {
		t.Errorf("image server hits %d, want 1", images.hits.Load())
	}
	got := rt.engineBodies()
	if len(got) != 1 {
		t.Fatalf("engine calls %d, want 1", len(got))
	}
	var sent struct {
		Messages []struct {
			Content []struct {
				Type     string `json:"type"`
				Text     string `json:"text"`
				ImageURL struct {
					URL    string `json:"url"`
					Detail string `json:"detail"`
				} `json:"image_url"`
			} `json:"content"`
		} `json:"messages"`
		Temperature float64 `json:"temperature"`
	}
	if err := json.Unmarshal(got[0], &sent); err != nil {
		t.Fatalf("engine body %s: %v", got[0], err)
	}
	parts := sent.Messages[0].Content
	want := "data:image/png;base64," + base64.StdEncoding.EncodeToString(img)
	if len(parts) != 2 || parts[1].ImageURL.URL != want || parts[1].ImageURL.Detail != "low" || parts[0].Text != "what is it?" || sent.Temperature != 0.5 {
		t.Errorf("the engine got %s; want the image inline as %s, the rest as sent", got[0], want)
	}
	if strings.Contains(string(got[0]), images.URL) {
		t.Errorf("the engine was sent the image URL: %s", got[0])
	}
}

func TestRateLimits(t *testing.T) {
	chat := chatJSON(chatService.AccessName, `"hi"`)
	t.Run("per key requests", func(t *testing.T) {
		c := newFakeClock()
		rt := newRouter(t, routerOptions{limits: ratelimit.Config{KeyRequests: 2}, clock: c.Now})
		for range 2 {
			if resp, body := rt.post(t, "/v1/chat/completions", rt.key, strings.NewReader(chat)); resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
		}
		resp, body := rt.post(t, "/v1/chat/completions", rt.key, strings.NewReader(chat))
		checkError(t, resp, body, 429, "requests", "rate_limit_exceeded", "", "2 requests per minute for this API key")
		if got := resp.Header.Get("Retry-After"); got != "30" {
			t.Errorf("Retry-After %q, want 30", got)
		}
		// The other key of the same owner has its own budget.
		if resp, _ := rt.post(t, "/v1/chat/completions", rt.second, strings.NewReader(chat)); resp.StatusCode != 200 {
			t.Errorf("second key: status %d, want 200", resp.StatusCode)
		}
		if n := len(rt.engineBodies()); n != 3 {
			t.Errorf("engine calls %d, want 3", n)
		}
	})
	t.Run("per service requests, across keys", func(t *testing.T) {
		c := newFakeClock()
		rt := newRouter(t, routerOptions{limits: ratelimit.Config{ServiceRequests: 1}, clock: c.Now})
		if resp, _ := rt.post(t, "/v1/chat/completions", rt.key, strings.NewReader(chat)); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		resp, body := rt.post(t, "/v1/chat/completions", rt.second, strings.NewReader(chat))
		checkError(t, resp, body, 429, "requests", "rate_limit_exceeded", "", "for the model "+chatService.AccessName)
		// Another service is not limited by this one.
		vision := chatJSON(visionService.AccessName, `"hi"`)
		if resp, _ := rt.post(t, "/v1/chat/completions", rt.second, strings.NewReader(vision)); resp.StatusCode != 200 {
			t.Errorf("other service: status %d, want 200", resp.StatusCode)
		}
		c.advance(time.Minute)
		if resp, _ := rt.post(t, "/v1/chat/completions", rt.second, strings.NewReader(chat)); resp.StatusCode != 200 {
			t.Errorf("a minute later: status %d, want 200", resp.StatusCode)
		}
	})
	t.Run("per key tokens, charged from the metered usage", func(t *testing.T) {
		c := newFakeClock()
		rt := newRouter(t, routerOptions{limits: ratelimit.Config{KeyTokens: 20}, clock: c.Now})
		// 17 tokens: 3 left, so the next call goes ahead and uses 17 more.
		for range 2 {
			if resp, body := rt.post(t, "/v1/chat/completions", rt.key, strings.NewReader(chat)); resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
		}
		// 14 in debt: 15 tokens at 20 a minute is 45s.
		resp, body := rt.post(t, "/v1/chat/completions", rt.key, strings.NewReader(chat))
		checkError(t, resp, body, 429, "tokens", "rate_limit_exceeded", "", "20 tokens per minute for this API key")
		if got, gotMs := resp.Header.Get("Retry-After"), resp.Header.Get("Retry-After-Ms"); got != "45" || gotMs != "45000" {
			t.Errorf("Retry-After %q, Retry-After-Ms %q; want 45, 45000", got, gotMs)
		}
		if n := len(rt.engineBodies()); n != 2 {
			t.Errorf("engine calls %d, want 2", n)
		}
		if n := rt.pub.count(); n != 2 {
			t.Errorf("usage events %d, want 2", n)
		}
		c.advance(45 * time.Second)
		if resp, _ := rt.post(t, "/v1/chat/completions", rt.key, strings.NewReader(chat)); resp.StatusCode != 200 {
			t.Errorf("after the wait: status %d, want 200", resp.StatusCode)
		}
	})
	t.Run("per service tokens, streamed usage included", func(t *testing.T) {
		c := newFakeClock()
		rt := newRouter(t, routerOptions{limits: ratelimit.Config{ServiceTokens: 10}, clock: c.Now})
		stream := `{"model":"` + chatService.AccessName + `","messages":[{"role":"user","content":"hi"}],"stream":true}`
		if resp, body := rt.post(t, "/v1/chat/completions", rt.key, strings.NewReader(stream)); resp.StatusCode != 200 || !strings.Contains(string(body), "[DONE]") {
			t.Fatalf("stream: status %d: %s", resp.StatusCode, body)
		}
		// 14 tokens streamed against 10: the service is spent for every key.
		resp, body := rt.post(t, "/v1/chat/completions", rt.second, strings.NewReader(chat))
		checkError(t, resp, body, 429, "tokens", "rate_limit_exceeded", "", "10 tokens per minute for the model "+chatService.AccessName)
	})
}

// TestBodyTimeout checks that a client sending its body too slowly is
// cut off, and that the limit ends once the body is in: a streamed answer
// may run longer.
func TestBodyTimeout(t *testing.T) {
	rt := newRouter(t, routerOptions{bodyTimeout: 300 * time.Millisecond})

	t.Run("a stalled body", func(t *testing.T) {
		conn, err := net.Dial("tcp", rt.srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":", rt.key)
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("no answer to a stalled body: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		checkError(t, resp, body, 400, "invalid_request_error", "invalid", "", "request body not received within 300ms")
		if n := len(rt.engineBodies()); n != 0 {
			t.Errorf("engine calls %d, want none", n)
		}
	})
	t.Run("a stream that outlasts the body limit", func(t *testing.T) {
		rt.mu.Lock()
		rt.streamDelay = 250 * time.Millisecond // three gaps: well past the body limit
		rt.mu.Unlock()
		stream := `{"model":"` + chatService.AccessName + `","messages":[{"role":"user","content":"hi"}],"stream":true}`
		resp, body := rt.post(t, "/v1/chat/completions", rt.key, strings.NewReader(stream))
		if resp.StatusCode != 200 || !strings.HasSuffix(string(body), "data: [DONE]\n\n") {
			t.Errorf("status %d, body %s; want the whole stream", resp.StatusCode, body)
		}
	})
}
