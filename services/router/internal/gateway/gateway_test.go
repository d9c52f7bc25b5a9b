package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/modelport/modelport/services/router/internal/routing"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var (
	alice = auth.Key{ID: "k-alice", OwnerID: "a11ce0000001"}
	bob   = auth.Key{ID: "k-bob", OwnerID: "b0b000000002"}
	admin = auth.Key{ID: "k-admin", OwnerID: "ad0000000003", Admin: true}
)

// answer is what the fake engine says for one endpoint.
type answer struct {
	status int
	body   string
	err    error
}

// call is one request the fake engine received.
type call struct {
	endpoint, path string
	body           []byte
}

// fakeEngine answers by endpoint and records every call.
type fakeEngine struct {
	mu      sync.Mutex
	answers map[string]answer
	calls   []call
}

func newFakeEngine() *fakeEngine { return &fakeEngine{answers: map[string]answer{}} }

func (e *fakeEngine) set(endpoint string, a answer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.answers[endpoint] = a
}

func (e *fakeEngine) Open(_ context.Context, endpoint, path string, body []byte, sent func()) (int, io.ReadCloser, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, call{endpoint: endpoint, path: path, body: slices.Clone(body)})
	a, ok := e.answers[endpoint]
	if !ok {
		a = answer{status: 200, body: completion}
	}
	if a.err != nil {
		return 0, nil, a.err
	}
	if sent != nil {
		sent()
	}
	return a.status, io.NopCloser(strings.NewReader(a.body)), nil
}

func (e *fakeEngine) endpoints() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, c := range e.calls {
		out = append(out, c.endpoint)
	}
	return out
}

// fakePublisher records what is published, or fails with err.
type fakePublisher struct {
	mu     sync.Mutex
	events []events.Event
	err    error
}

func (p *fakePublisher) Publish(_ context.Context, ev events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	p.events = append(p.events, ev)
	return nil
}

func (p *fakePublisher) published() []events.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.events)
}

// choices is what the engine writes, compact, as engines and the
// simulator do.
const choices = `[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop","logprobs":null}]`

// choicesWithToolCalls is choices as the client gets them: fields in
// encoding/json's order, and message.tool_calls [] where the engine wrote
// none, as the product's documented answer has it.
const choicesWithToolCalls = `[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"Hello there","role":"assistant","tool_calls":[]}}]`

// completion is an engine's chat completion with its own id and model name.
const completion = `{"id":"chatcmpl-engine","object":"chat.completion","created":1700000000,"model":"served-name",` +
	`"choices":` + choices + `,"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17},"system_fingerprint":"fp-1"}`

const unreachable = "unreachable"

// unavailable is an instance that refuses connections: the request never
// reached it.
func unavailable(endpoint string) answer {
	return answer{err: &gateway.EngineError{Faulty: true, Err: errs.Wrap(errs.Unavailable, errors.New("connection refused"), "engine %s %s", endpoint, unreachable)}}
}

// Services in the table: alice's text and image services, bob's text
// service, and alice's service with no ready instance.
var (
	aliceChat = state.Service{
		ID: "s-alice-chat", OwnerID: alice.OwnerID, Name: "chat", AccessName: "u-" + alice.OwnerID + "/chat",
		BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Engine: "simulator", Instances: 2,
		Status: state.StatusRunning, CreatedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	aliceImage = state.Service{
		ID: "s-alice-image", OwnerID: alice.OwnerID, Name: "draw", AccessName: "u-" + alice.OwnerID + "/draw",
		BaseModel: "stable-diffusion-xl", Task: state.TaskImageGeneration, Engine: "simulator", Instances: 1,
		Status: state.StatusRunning, CreatedAt: time.Date(2025, 1, 3, 0, 0, 0, 0, time.UTC),
	}
	aliceIdle = state.Service{
		ID: "s-alice-idle", OwnerID: alice.OwnerID, Name: "idle", AccessName: "u-" + alice.OwnerID + "/idle",
		BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Engine: "simulator", Instances: 1,
		Status: state.StatusDeploying, CreatedAt: time.Date(2025, 1, 4, 0, 0, 0, 0, time.UTC),
	}
	bobChat = state.Service{
		ID: "s-bob-chat", OwnerID: bob.OwnerID, Name: "chat", AccessName: "u-" + bob.OwnerID + "/chat",
		BaseModel: "llama-3.1-8b-instruct", Task: state.TaskTextGeneration, Engine: "simulator", Instances: 1,
		Status: state.StatusRunning, CreatedAt: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
	}
)

func instance(svc state.Service, id string) state.Instance {
	return state.Instance{
		ID: id, ServiceID: svc.ID, WorkerID: "w1", Engine: "simulator",
		Endpoint: "http://" + id + ".test/v1", Status: state.InstanceReady,
	}
}

type fixture struct {
	g     *gateway.Gateway
	table *routing.Table
	eng   *fakeEngine
	pub   *fakePublisher
}

// newFixture returns a gateway over a table with the services above;
// alice's chat service has instances i-a1 and i-a2, bob's has i-b1.
func newFixture() fixture {
	tb := routing.NewTable()
	for _, s := range []state.Service{aliceChat, aliceImage, aliceIdle, bobChat} {
		tb.PutService(s)
	}
	tb.PutInstance(instance(aliceChat, "i-a1"))
	tb.PutInstance(instance(aliceChat, "i-a2"))
	tb.PutInstance(instance(aliceImage, "i-img"))
	tb.PutInstance(instance(bobChat, "i-b1"))
	f := fixture{table: tb, eng: newFakeEngine(), pub: &fakePublisher{}}
	f.g = gateway.New(tb, routing.NewDemand(), f.eng, f.pub, quiet)
	f.g.ReadyWait = 100 * time.Millisecond
	return f
}

func chatBody(model string) []byte {
	return []byte(`{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"temperature":0.2}`)
}

// checkErr fails unless err has the kind and param wanted.
func checkErr(t *testing.T, err error, kind errs.Kind, param string) *errs.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", kind)
	}
	if got, want := errs.KindOf(err), kind; got != want {
		t.Fatalf("kind = %v, want %v (err %v)", got, want, err)
	}
	e, ok := errs.As(err)
	if !ok {
		t.Fatalf("error %v is not an *errs.Error", err)
	}
	if got, want := e.Param, param; got != want {
		t.Errorf("param = %q, want %q (err %v)", got, want, err)
	}
	return e
}

func TestChatCompletionRejects(t *testing.T) {
	tests := []struct {
		name      string
		caller    auth.Key
		body      string
		wantKind  errs.Kind
		wantParam string
		wantMsg   string // a part of the message
	}{
		{name: "not JSON", caller: alice, body: `{"model":`, wantKind: errs.Invalid, wantMsg: "not valid JSON"},
		{name: "empty body", caller: alice, body: ``, wantKind: errs.Invalid, wantMsg: "JSON object"},
		{name: "messages a string", caller: alice, body: `{"model":"m","messages":"hi"}`, wantKind: errs.Invalid, wantParam: "messages", wantMsg: "messages"},
		{name: "model a number", caller: alice, body: `{"model":7,"messages":[{}]}`, wantKind: errs.Invalid, wantParam: "model", wantMsg: "model"},
		{name: "stream a string", caller: alice, body: `{"model":"m","messages":[{}],"stream":"yes"}`, wantKind: errs.Invalid, wantParam: "stream", wantMsg: "stream"},
		{name: "missing model", caller: alice, body: `{"messages":[{"role":"user","content":"hi"}]}`, wantKind: errs.Invalid, wantParam: "model"},
		{name: "empty model", caller: alice, body: `{"model":"","messages":[{"role":"user","content":"hi"}]}`, wantKind: errs.Invalid, wantParam: "model"},
		{name: "no messages", caller: alice, body: `{"model":"` + aliceChat.AccessName + `"}`, wantKind: errs.Invalid, wantParam: "messages"},
		{name: "empty messages", caller: alice, body: `{"model":"` + aliceChat.AccessName + `","messages":[]}`, wantKind: errs.Invalid, wantParam: "messages"},
		{name: "null messages", caller: alice, body: `{"model":"` + aliceChat.AccessName + `","messages":null}`, wantKind: errs.Invalid, wantParam: "messages"},
		{name: "bad role", caller: alice, body: `{"model":"m","messages":[{"role":"robot","content":"hi"}]}`, wantKind: errs.Invalid, wantParam: "messages[0].role"},
		{name: "content a number", caller: alice, body: `{"model":"m","messages":[{"role":"user","content":7}]}`, wantKind: errs.Invalid, wantParam: "messages[0].content"},
		{name: "unknown part type", caller: alice, body: `{"model":"m","messages":[{"role":"user","content":[{"type":"video"}]}]}`, wantKind: errs.Invalid, wantParam: "messages[0].content[0].type"},
		{name: "image part without url", caller: alice, body: `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}`, wantKind: errs.Invalid, wantParam: "messages[0].content[0].image_url.url"},
		{name: "image url of another scheme", caller: alice, body: `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"file:///etc/passwd"}}]}]}`, wantKind: errs.Invalid, wantParam: "messages[0].content[0].image_url.url"},
		{name: "image to a text service", caller: alice, body: `{"model":"` + aliceChat.AccessName + `","messages":[{"role":"user","content":[{"type":"text","text":"what is it?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}`, wantKind: errs.Invalid, wantParam: "messages[0].content[1]", wantMsg: "does not accept images"},
		{name: "stop a number", caller: alice, body: `{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":5}`, wantKind: errs.Invalid, wantParam: "stop"},
		{name: "temperature a string", caller: alice, body: `{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}`, wantKind: errs.Invalid, wantParam: "temperature"},
		{name: "max_tokens a string", caller: alice, body: `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":"ten"}`, wantKind: errs.Invalid, wantParam: "max_tokens"},
		{name: "tools an object", caller: alice, body: `{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":{}}`, wantKind: errs.Invalid, wantParam: "tools"},
		{name: "unknown model", caller: alice, body: string(chatBody("u-" + alice.OwnerID + "/nope")), wantKind: errs.NotFound, wantParam: "model"},
		{name: "unknown model for admin", caller: admin, body: string(chatBody("u-" + alice.OwnerID + "/nope")), wantKind: errs.NotFound, wantParam: "model"},
		{name: "another owner's model", caller: bob, body: string(chatBody(aliceChat.AccessName)), wantKind: errs.NotFound, wantParam: "model"},
		{name: "image-generation service", caller: alice, body: string(chatBody(aliceImage.AccessName)), wantKind: errs.Invalid, wantParam: "model", wantMsg: "images/generations"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture()
			out, err := complete(f.g, context.Background(), tc.caller, "req-1", []byte(tc.body))
			e := checkErr(t, err, tc.wantKind, tc.wantParam)
			if !strings.Contains(e.Msg, tc.wantMsg) {
				t.Errorf("message %q does not contain %q", e.Msg, tc.wantMsg)
			}
			if out != nil {
				t.Errorf("got answer %s with the error", out)
			}
			if got := f.eng.endpoints(); len(got) != 0 {
				t.Errorf("engine called at %v, want no call", got)
			}
			if got := f.pub.published(); len(got) != 0 {
				t.Errorf("published %d events, want none", len(got))
			}
		})
	}
}

// TestChatCompletionRejectsNonObjectBody: a body that is JSON but not an
// object says so, as httpx.DecodeJSON does for the control API, rather
// than naming an empty field.
func TestChatCompletionRejectsNonObjectBody(t *testing.T) {
	for _, body := range []string{`[1]`, `"hi"`, `42`} {
		t.Run(body, func(t *testing.T) {
			f := newFixture()
			_, err := complete(f.g, context.Background(), alice, "req-1", []byte(body))
			e := checkErr(t, err, errs.Invalid, "")
			if strings.HasPrefix(e.Msg, " ") || !strings.Contains(e.Msg, "JSON object") {
				t.Errorf("message = %q, want one saying the body must be a JSON object", e.Msg)
			}
		})
	}
}

func TestChatCompletionAdminCallsAnyModel(t *testing.T) {
	f := newFixture()
	out, err := complete(f.g, context.Background(), admin, "req-1", chatBody(bobChat.AccessName))
	if err != nil {
		t.Fatalf("admin calling bob's model: %v", err)
	}
	if got, want := f.eng.endpoints(), []string{instance(bobChat, "i-b1").Endpoint}; !slices.Equal(got, want) {
		t.Errorf("engine called at %v, want %v", got, want)
	}
	var cc struct{ Model string }
	if err := json.Unmarshal(out, &cc); err != nil {
		t.Fatal(err)
	}
	if got, want := cc.Model, bobChat.AccessName; got != want {
		t.Errorf("model = %q, want %q", got, want)
	}
	evs := f.pub.published()
	if len(evs) != 1 {
		t.Fatalf("published %d events, want 1", len(evs))
	}
	ev := evs[0].(events.RequestCompletedV1)
	if ev.OwnerID != bob.OwnerID || ev.APIKeyID != admin.ID {
		t.Errorf("event owner %q key %q, want the service's owner %q and the admin's key %q", ev.OwnerID, ev.APIKeyID, bob.OwnerID, admin.ID)
	}
}

var completionID = regexp.MustCompile(`^cmp-[0-9a-f]{32}$`)

func TestChatCompletionAnswer(t *testing.T) {
	f := newFixture()
	body := chatBody(aliceChat.AccessName)
	before := time.Now().UTC()
	out, err := complete(f.g, context.Background(), alice, "req-42", body)
	after := time.Now().UTC()
	if err != nil {
		t.Fatalf("ChatCompletion: %v", err)
	}

	// The engine got the body as the client sent it, on the chat path.
	f.eng.mu.Lock()
	calls := slices.Clone(f.eng.calls)
	f.eng.mu.Unlock()
	if len(calls) != 1 {
		t.Fatalf("engine called %d times, want 1", len(calls))
	}
	if got, want := calls[0].path, "/chat/completions"; got != want {
		t.Errorf("path = %q, want %q", got, want)
	}
	if got, want := calls[0].body, body; !bytes.Equal(got, want) {
		t.Errorf("engine got body %s, want %s", got, want)
	}
	instanceID := strings.TrimSuffix(strings.TrimPrefix(calls[0].endpoint, "http://"), ".test/v1")
	if instanceID != "i-a1" && instanceID != "i-a2" {
		t.Fatalf("engine called at %q, want one of alice's chat instances", calls[0].endpoint)
	}

	var got struct {
		ID                string          `json:"id"`
		Object            string          `json:"object"`
		Created           int64           `json:"created"`
		Model             string          `json:"model"`
		Choices           json.RawMessage `json:"choices"`
		Usage             gateway.Usage   `json:"usage"`
		SystemFingerprint string          `json:"system_fingerprint"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("answer %s: %v", out, err)
	}
	if !completionID.MatchString(got.ID) {
		t.Errorf("id = %q, want cmp- and 32 hex digits", got.ID)
	}
	if got, want := got.Object, "chat.completion"; got != want {
		t.Errorf("object = %q, want %q", got, want)
	}
	if got, want := got.Model, aliceChat.AccessName; got != want {
		t.Errorf("model = %q, want the access name %q", got, want)
	}
	if got, want := string(got.Choices), choicesWithToolCalls; got != want {
		t.Errorf("choices =\n %s, want as the engine wrote them, with message.tool_calls []\n %s", got, want)
	}
	if got, want := got.Usage, (gateway.Usage{PromptTokens: 12, CompletionTokens: 5, TotalTokens: 17}); got != want {
		t.Errorf("usage = %+v, want %+v", got, want)
	}
	if got, want := got.Created, int64(1700000000); got != want {
		t.Errorf("created = %d, want the engine's %d", got, want)
	}
	if got, want := got.SystemFingerprint, "fp-1"; got != want {
		t.Errorf("system_fingerprint = %q, want %q", got, want)
	}

	evs := f.pub.published()
	if len(evs) != 1 {
		t.Fatalf("published %d events, want 1", len(evs))
	}
	ev, ok := evs[0].(events.RequestCompletedV1)
	if !ok {
		t.Fatalf("published %T, want events.RequestCompletedV1", evs[0])
	}
	if ev.ID == "" {
		t.Error("usage event has no event ID")
	}
	if ev.StartedAt.Before(before.Add(-time.Millisecond)) || ev.FinishedAt.After(after.Add(time.Millisecond)) || ev.FinishedAt.Before(ev.StartedAt) {
		t.Errorf("started %v finished %v, want before <= started <= finished <= after (%v, %v)", ev.StartedAt, ev.FinishedAt, before, after)
	}
	want := events.RequestCompletedV1{
		Meta: ev.Meta, RequestID: "req-42", ServiceID: aliceChat.ID, OwnerID: alice.OwnerID,
		AccessName: aliceChat.AccessName, BaseModel: aliceChat.BaseModel, APIKeyID: alice.ID, InstanceID: instanceID,
		Endpoint: "/v1/chat/completions", Status: 200, PromptTokens: 12, CompletionTokens: 5, TotalTokens: 17,
		StartedAt: ev.StartedAt, FinishedAt: ev.FinishedAt,
	}
	if ev != want {
		t.Errorf("usage event\n %+v, want\n %+v", ev, want)
	}
	if got, want := ev.Subject(), events.SubjectRequestCompletedV1; got != want {
		t.Errorf("subject = %q, want %q", got, want)
	}

	// A second answer gets an ID of its own, and so does its event.
	out2, err := complete(f.g, context.Background(), alice, "req-43", body)
	if err != nil {
		t.Fatal(err)
	}
	var got2 struct{ ID string }
	if err := json.Unmarshal(out2, &got2); err != nil {
		t.Fatal(err)
	}
	if got2.ID == got.ID {
		t.Errorf("two answers share the id %q", got.ID)
	}
	if evs := f.pub.published(); len(evs) != 2 || evs[0].EventID() == evs[1].EventID() {
		t.Errorf("want two events with distinct IDs, got %v", evs)
	}
}

// TestChatCompletionKeepsChoicesVerbatim: the choices' values reach the
// client as the engine wrote them, without the HTML escaping encoding/json
// would add, and with tool calls the engine made kept as they are.
func TestChatCompletionKeepsChoicesVerbatim(t *testing.T) {
	const engineChoices = `[{"index":0,"message":{"role":"assistant","content":"if a < b && c > d { return }"},"finish_reason":"stop"},` +
		`{"index":1,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":\"<b>\"}"}}]},"finish_reason":"tool_calls"}]`
	const verbatim = `[{"finish_reason":"stop","index":0,"message":{"content":"if a < b && c > d { return }","role":"assistant","tool_calls":[]}},` +
		`{"finish_reason":"tool_calls","index":1,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":\"<b>\"}"}}]}}]`
	f := newFixture()
	f.eng.set(instance(aliceChat, "i-a1").Endpoint, answer{status: 200, body: `{"id":"x","object":"chat.completion","created":1,"model":"m","choices":` + engineChoices + `,"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`})
	f.table.DeleteInstance(aliceChat.ID, "i-a2")
	out, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceChat.AccessName))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Choices json.RawMessage `json:"choices"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if got, want := string(got.Choices), verbatim; got != want {
		t.Errorf("choices =\n %s, want\n %s", got, want)
	}
}

func TestChatCompletionEngineErrors(t *testing.T) {
	tests := []struct {
		name      string
		answer    answer
		wantKind  errs.Kind
		wantParam string
		wantMsg   string
	}{
		{
			name:      "400 with an OpenAI error",
			answer:    answer{status: 400, body: `{"error":{"message":"max_tokens must be at least 1","type":"invalid_request_error","param":"max_tokens","code":null}}`},
			wantKind:  errs.Invalid,
			wantParam: "max_tokens",
			wantMsg:   "max_tokens must be at least 1",
		},
		{
			name:     "422 with a null param",
			answer:   answer{status: 422, body: `{"error":{"message":"bad temperature","param":null}}`},
			wantKind: errs.Invalid,
			wantMsg:  "bad temperature",
		},
		{
			name:     "400 with a plain body",
			answer:   answer{status: 400, body: "  bad request\n"},
			wantKind: errs.Invalid,
			wantMsg:  "bad request",
		},
		{
			name:     "404: the instance does not serve its name",
			answer:   answer{status: 404, body: `{"error":{"message":"model \"x\" is not served here","param":"model"}}`},
			wantKind: errs.Upstream,
		},
		{
			name:     "500",
			answer:   answer{status: 500, body: `{"error":{"message":"CUDA out of memory"}}`},
			wantKind: errs.Upstream,
			wantMsg:  "500",
		},
		{
			name:     "504",
			answer:   answer{status: 504, body: `{"error":{"message":"queue timeout"}}`},
			wantKind: errs.Timeout,
			wantMsg:  "queue timeout",
		},
		{
			name:     "429",
			answer:   answer{status: 429, body: `{"error":{"message":"too many requests"}}`},
			wantKind: errs.RateLimited,
		},
		{
			name:     "answer without usage",
			answer:   answer{status: 200, body: `{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[]}`},
			wantKind: errs.Upstream,
			wantMsg:  "usage",
		},
		{
			name:     "answer not a chat completion",
			answer:   answer{status: 200, body: `<html>oops</html>`},
			wantKind: errs.Upstream,
		},
		{
			name:     "failure that is not a transport failure",
			answer:   answer{err: errs.E(errs.Internal, "read engine answer")},
			wantKind: errs.Internal,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture()
			f.eng.set(instance(aliceChat, "i-a1").Endpoint, tc.answer)
			f.eng.set(instance(aliceChat, "i-a2").Endpoint, tc.answer)
			out, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceChat.AccessName))
			e := checkErr(t, err, tc.wantKind, tc.wantParam)
			if !strings.Contains(e.Error(), tc.wantMsg) {
				t.Errorf("error %q does not contain %q", e.Error(), tc.wantMsg)
			}
			if out != nil {
				t.Errorf("got answer %s with the error", out)
			}
			if got, want := len(f.eng.endpoints()), 1; got != want {
				t.Errorf("engine called %d times, want %d (no retry after an answer)", got, want)
			}
			if got := f.pub.published(); len(got) != 0 {
				t.Errorf("published %d usage events for a failed request, want none", len(got))
			}
		})
	}
}

func TestChatCompletionRetry(t *testing.T) {
	a1, a2 := instance(aliceChat, "i-a1").Endpoint, instance(aliceChat, "i-a2").Endpoint
	tests := []struct {
		name string
		// down are the unreachable endpoints.
		down      []string
		instances []string // alice's chat instances in the table
		hold      string   // an instance kept busy during the request
		wantKind  errs.Kind
		wantErr   bool
		wantCalls int
		wantLast  string // the endpoint called last
	}{
		{name: "first unreachable", down: []string{a1}, instances: []string{"i-a1", "i-a2"}, hold: "i-a2", wantCalls: 2, wantLast: a2},
		{name: "first unreachable, other order", down: []string{a2}, instances: []string{"i-a1", "i-a2"}, hold: "i-a1", wantCalls: 2, wantLast: a1},
		{name: "healthy one picked first", down: []string{a1}, instances: []string{"i-a1", "i-a2"}, hold: "i-a1", wantCalls: 1, wantLast: a2},
		{name: "both unreachable", down: []string{a1, a2}, instances: []string{"i-a1", "i-a2"}, wantErr: true, wantKind: errs.Unavailable, wantCalls: 2},
		// Refused at once, by the only instance: tried once more there.
		{name: "only instance unreachable", down: []string{a1}, instances: []string{"i-a1"}, wantErr: true, wantKind: errs.Unavailable, wantCalls: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Repeat, since the first pick among equally loaded instances
			// is random.
			for range 10 {
				f := newFixture()
				for _, id := range []string{"i-a1", "i-a2"} {
					if !slices.Contains(tc.instances, id) {
						f.table.DeleteInstance(aliceChat.ID, id)
					}
				}
				for _, ep := range tc.down {
					f.eng.set(ep, unavailable(ep))
				}
				release := func() {}
				if tc.hold != "" {
					// Load one instance, so the other is picked first.
					var ok bool
					_, release, ok = f.table.Pick(aliceChat.ID, slices.DeleteFunc(slices.Clone(tc.instances), func(id string) bool { return id == tc.hold })...)
					if !ok {
						t.Fatal("no instance to hold")
					}
				}
				out, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceChat.AccessName))
				release()
				calls := f.eng.endpoints()
				if got, want := len(calls), tc.wantCalls; got != want {
					t.Fatalf("engine called %d times (%v), want %d", got, calls, want)
				}
				if len(calls) == 2 && calls[0] == calls[1] && len(tc.instances) > 1 {
					t.Fatalf("retried on the same instance %s with another one there", calls[0])
				}
				if tc.wantErr {
					checkErr(t, err, tc.wantKind, "")
					if out != nil || len(f.pub.published()) != 0 {
						t.Fatalf("answer %s and %d events with the error", out, len(f.pub.published()))
					}
					continue
				}
				if err != nil {
					t.Fatalf("ChatCompletion: %v", err)
				}
				if got, want := calls[len(calls)-1], tc.wantLast; got != want {
					t.Fatalf("last call to %s, want %s", got, want)
				}
				evs := f.pub.published()
				if len(evs) != 1 {
					t.Fatalf("published %d events, want 1", len(evs))
				}
				wantID := strings.TrimSuffix(strings.TrimPrefix(tc.wantLast, "http://"), ".test/v1")
				if got, want := evs[0].(events.RequestCompletedV1).InstanceID, wantID; got != want {
					t.Fatalf("usage event instance = %q, want the instance that answered, %q", got, want)
				}
			}
		})
	}
}

func TestChatCompletionWaitsForReady(t *testing.T) {
	t.Run("none appears", func(t *testing.T) {
		f := newFixture()
		start := time.Now()
		out, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceIdle.AccessName))
		elapsed := time.Since(start)
		e := checkErr(t, err, errs.Unavailable, "")
		if !strings.Contains(e.Msg, state.StatusDeploying) {
			t.Errorf("message %q does not say the service is %s", e.Msg, state.StatusDeploying)
		}
		if elapsed < f.g.ReadyWait {
			t.Errorf("gave up after %v, want at least ReadyWait %v", elapsed, f.g.ReadyWait)
		}
		if out != nil || len(f.eng.endpoints()) != 0 || len(f.pub.published()) != 0 {
			t.Errorf("answer %s, %d engine calls, %d events, want none", out, len(f.eng.endpoints()), len(f.pub.published()))
		}
	})
	t.Run("one appears during the wait", func(t *testing.T) {
		f := newFixture()
		f.g.ReadyWait = 5 * time.Second
		inst := instance(aliceIdle, "i-late")
		go func() {
			time.Sleep(60 * time.Millisecond)
			f.table.PutInstance(inst)
		}()
		_, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceIdle.AccessName))
		if err != nil {
			t.Fatalf("ChatCompletion: %v", err)
		}
		if got, want := f.eng.endpoints(), []string{inst.Endpoint}; !slices.Equal(got, want) {
			t.Errorf("engine called at %v, want %v", got, want)
		}
	})
	t.Run("caller gives up", func(t *testing.T) {
		f := newFixture()
		f.g.ReadyWait = 5 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), 80*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := complete(f.g, ctx, alice, "req-1", chatBody(aliceIdle.AccessName))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want the context's deadline", err)
		}
		if elapsed := time.Since(start); elapsed > 2*time.Second {
			t.Errorf("waited %v after the caller's deadline", elapsed)
		}
	})
}

func TestChatCompletionPublishFailure(t *testing.T) {
	f := newFixture()
	f.pub.err = errors.New("nats: timeout")
	out, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceChat.AccessName))
	checkErr(t, err, errs.Unavailable, "")
	if !errors.Is(err, f.pub.err) {
		t.Errorf("error %v does not wrap the publish error", err)
	}
	if out != nil {
		t.Errorf("got answer %s though usage was not recorded", out)
	}
	if got, want := len(f.eng.endpoints()), 1; got != want {
		t.Errorf("engine called %d times, want %d", got, want)
	}
}

func TestChatCompletionLeastLoaded(t *testing.T) {
	f := newFixture()
	// Hold a request on i-a1, so i-a2 is the less loaded.
	ep, release, ok := f.table.Pick(aliceChat.ID, "i-a2")
	if !ok || ep.Instance.ID != "i-a1" {
		t.Fatalf("holding i-a1: got %v, %v", ep, ok)
	}
	for range 10 {
		if _, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceChat.AccessName)); err != nil {
			t.Fatal(err)
		}
	}
	a2 := instance(aliceChat, "i-a2").Endpoint
	for i, got := range f.eng.endpoints() {
		if got != a2 {
			t.Errorf("call %d went to %s, want the less loaded %s", i, got, a2)
		}
	}
	// Requests release their instance when they end.
	if got, want := ep.Outstanding(), int64(1); got != want {
		t.Errorf("i-a1 outstanding = %d, want %d", got, want)
	}
	release()
	e2, release2, _ := f.table.Pick(aliceChat.ID, "i-a1")
	defer release2()
	if got, want := e2.Outstanding(), int64(1); got != want {
		t.Errorf("i-a2 outstanding = %d with only this pick, want %d: the gateway did not release it", got, want)
	}
}

func TestModels(t *testing.T) {
	f := newFixture()
	model := func(s state.Service) gateway.Model {
		return gateway.Model{ID: s.AccessName, Object: "model", Created: s.CreatedAt.Unix(), OwnedBy: "u-" + s.OwnerID,
			BaseModel: s.BaseModel, Task: s.Task, Engine: s.Engine}
	}
	sorted := func(ss ...state.Service) []gateway.Model {
		out := []gateway.Model{}
		for _, s := range ss {
			out = append(out, model(s))
		}
		slices.SortFunc(out, func(a, b gateway.Model) int { return strings.Compare(a.ID, b.ID) })
		return out
	}
	tests := []struct {
		name   string
		caller auth.Key
		want   []gateway.Model
	}{
		{name: "alice", caller: alice, want: sorted(aliceChat, aliceImage, aliceIdle)},
		{name: "bob", caller: bob, want: sorted(bobChat)},
		{name: "admin", caller: admin, want: sorted(aliceChat, aliceImage, aliceIdle, bobChat)},
		{name: "nobody's", caller: auth.Key{ID: "k-x", OwnerID: "0000000000ff"}, want: []gateway.Model{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := f.g.Models(tc.caller)
			if !slices.Equal(got, tc.want) {
				t.Errorf("Models =\n %+v, want\n %+v", got, tc.want)
			}
			if got == nil {
				t.Error("Models returned nil, want an empty list (JSON [])")
			}
		})
	}
	t.Run("sorted by id", func(t *testing.T) {
		// Enough services that the table's own order is all but never
		// sorted by chance.
		tb := routing.NewTable()
		var want []string
		for i := 15; i >= 0; i-- {
			s := aliceChat
			s.ID, s.AccessName = fmt.Sprintf("s-%02d", i), fmt.Sprintf("u-%s/m%02d", alice.OwnerID, i)
			tb.PutService(s)
			want = append(want, s.AccessName)
		}
		slices.Sort(want)
		var got []string
		for _, m := range gateway.New(tb, routing.NewDemand(), newFakeEngine(), &fakePublisher{}, quiet).Models(alice) {
			got = append(got, m.ID)
		}
		if !slices.Equal(got, want) {
			t.Errorf("Models = %v, want sorted by id %v", got, want)
		}
	})
}

// complete makes a non-streaming chat call and returns the body.
func complete(g *gateway.Gateway, ctx context.Context, caller auth.Key, requestID string, body []byte) ([]byte, error) {
	reply, err := g.Chat(ctx, gateway.Call{Caller: caller, RequestID: requestID, Body: body})
	if err != nil {
		return nil, err
	}
	return reply.Body, nil
}

// TestDeletedServiceIsNotFound: once a deletion is accepted the access name
// stops resolving, before the record itself is gone.
func TestDeletedServiceIsNotFound(t *testing.T) {
	for _, status := range []string{state.StatusDeleting, state.StatusDeleted} {
		t.Run(status, func(t *testing.T) {
			f := newFixture()
			gone := aliceChat
			gone.Status = status
			f.table.PutService(gone)
			_, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceChat.AccessName))
			checkErr(t, err, errs.NotFound, "model")
			if _, err := f.g.Model(alice, aliceChat.AccessName); errs.KindOf(err) != errs.NotFound {
				t.Errorf("Model: %v, want NotFound", err)
			}
			if got := f.eng.endpoints(); len(got) != 0 {
				t.Errorf("engine called: %v", got)
			}
		})
	}
}

// TestRetryOnlyWhatNeverStarted: a request is sent to a second instance
// only when it never reached the first, or the engine itself refused to
// start it; an instance leaves the rotation only when at fault.
func TestRetryOnlyWhatNeverStarted(t *testing.T) {
	a1 := instance(aliceChat, "i-a1").Endpoint
	failure := func(kind errs.Kind, sent, faulty bool) answer {
		return answer{err: &gateway.EngineError{Sent: sent, Faulty: faulty, Err: errs.E(kind, "engine trouble")}}
	}
	tests := []struct {
		name      string
		first     answer
		wantCalls int
		wantKind  errs.Kind // 0: answered
		wantOut   bool      // i-a1 out of rotation afterwards
	}{
		{name: "never reached, instance at fault", first: failure(errs.Unavailable, false, true), wantCalls: 2, wantOut: true},
		{name: "never reached, stale connection", first: failure(errs.Unavailable, false, false), wantCalls: 2},
		{name: "reached, then reset", first: failure(errs.Upstream, true, true), wantCalls: 1, wantKind: errs.Upstream, wantOut: true},
		{name: "reached on a reused connection, then reset", first: failure(errs.Upstream, true, false), wantCalls: 1, wantKind: errs.Upstream},
		{name: "reached, no answer in time", first: failure(errs.Timeout, true, true), wantCalls: 1, wantKind: errs.Timeout, wantOut: true},
		{name: "the engine's own 503", first: answer{status: 503, body: `{"error":{"message":"loading the model","type":"unavailable_error"}}`}, wantCalls: 2, wantOut: true},
		{name: "a proxy's 503", first: answer{status: 503, body: "upstream connect error or disconnect/reset before headers"}, wantCalls: 1, wantKind: errs.Upstream, wantOut: true},
		{name: "a 502", first: answer{status: 502, body: `{"error":{"message":"bad gateway"}}`}, wantCalls: 1, wantKind: errs.Upstream, wantOut: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture()
			f.eng.set(a1, tc.first)
			// i-a2 busy, so i-a1 is picked first.
			_, release, _ := f.table.Pick(aliceChat.ID, "i-a1")
			_, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceChat.AccessName))
			release()
			if got := len(f.eng.endpoints()); got != tc.wantCalls {
				t.Errorf("engine called %d times, want %d", got, tc.wantCalls)
			}
			if tc.wantKind == 0 && err != nil || tc.wantKind != 0 && errs.KindOf(err) != tc.wantKind {
				t.Errorf("err %v, want kind %v", err, tc.wantKind)
			}
			// With i-a2 as busy again, a healthy i-a1 is picked.
			f.eng.set(a1, answer{status: 200, body: completion})
			_, release, _ = f.table.Pick(aliceChat.ID, "i-a1")
			defer release()
			before := len(f.eng.endpoints())
			if _, err := complete(f.g, context.Background(), alice, "req-2", chatBody(aliceChat.AccessName)); err != nil {
				t.Fatal(err)
			}
			out := f.eng.endpoints()[before] != a1
			if out != tc.wantOut {
				t.Errorf("i-a1 out of rotation: %v, want %v", out, tc.wantOut)
			}
		})
	}
}

// TestClientGoneAfterTheEngineGotTheRequest: a non-streaming request whose
// client goes away once the engine has it is metered as 499, with the
// prompt's tokens counted by the router; one whose client went away
// before is not metered.
func TestClientGoneAfterTheEngineGotTheRequest(t *testing.T) {
	for _, sent := range []bool{true, false} {
		t.Run(fmt.Sprintf("sent %v", sent), func(t *testing.T) {
			f := newFixture()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			g := gateway.New(f.table, routing.NewDemand(), engineFunc(func(context.Context) (int, io.ReadCloser, error) {
				cancel() // the client goes away while the engine works
				return 0, nil, &gateway.EngineError{Sent: sent, Err: context.Canceled}
			}), f.pub, quiet)
			_, err := complete(g, ctx, alice, "req-1", chatBody(aliceChat.AccessName))
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err %v, want context.Canceled", err)
			}
			evs := f.pub.published()
			if !sent {
				if len(evs) != 0 {
					t.Errorf("metered %v for a request no engine got", evs)
				}
				return
			}
			if len(evs) != 1 {
				t.Fatalf("%d usage events, want 1", len(evs))
			}
			ev := evs[0].(events.RequestCompletedV1)
			// "hi" from the user: 3 + 4 + 1 + 1.
			if ev.Status != 499 || ev.PromptTokens != 9 || ev.CompletionTokens != 0 {
				t.Errorf("metered status %d, %d+%d tokens; want 499 with the prompt's 9", ev.Status, ev.PromptTokens, ev.CompletionTokens)
			}
		})
	}
}

// engineFunc is an engine that answers every request with f.
type engineFunc func(ctx context.Context) (int, io.ReadCloser, error)

func (f engineFunc) Open(ctx context.Context, _, _ string, _ []byte, _ func()) (int, io.ReadCloser, error) {
	return f(ctx)
}

// timedOut is a connection attempt that timed out.
type timedOut struct{}

func (timedOut) Error() string { return "dial tcp 10.0.0.7:9100: i/o timeout" }
func (timedOut) Timeout() bool { return true }

// TestRetryTheOnlyInstance: a request the only instance refused at once
// is tried there once more (it never started); one whose connection timed
// out is not, so the client does not wait twice.
func TestRetryTheOnlyInstance(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cause     error
		wantCalls int
	}{
		{name: "refused", cause: errors.New("connection refused"), wantCalls: 2},
		{name: "timed out", cause: timedOut{}, wantCalls: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture()
			f.table.DeleteInstance(aliceChat.ID, "i-a2")
			a1 := instance(aliceChat, "i-a1").Endpoint
			f.eng.set(a1, answer{err: &gateway.EngineError{Faulty: true, Err: errs.Wrap(errs.Unavailable, tc.cause, "engine unreachable")}})
			_, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceChat.AccessName))
			checkErr(t, err, errs.Unavailable, "")
			if got := len(f.eng.endpoints()); got != tc.wantCalls {
				t.Errorf("engine called %d times, want %d", got, tc.wantCalls)
			}
		})
	}
}
