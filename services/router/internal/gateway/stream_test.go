package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/modelport/modelport/services/router/internal/routing"
)

// Chunks as a vLLM engine streams them when asked for continuous usage
// stats: a role chunk, two content chunks (the first with text that
// encoding/json would HTML-escape), a finish chunk with a field the
// gateway does not know, and the final usage chunk with no choices.
const (
	chunkRole = `{"id":"chatcmpl-engine","object":"chat.completion.chunk","created":1700000000,"model":"served-name","system_fingerprint":"fp-1",` +
		`"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":12,"completion_tokens":0,"total_tokens":12}}`
	chunkText = `{"id":"chatcmpl-engine","object":"chat.completion.chunk","created":1700000000,"model":"served-name","system_fingerprint":"fp-1",` +
		`"choices":[{"index":0,"delta":{"content":"if a < b && c > d"},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}`
	chunkMore = `{"id":"chatcmpl-engine","object":"chat.completion.chunk","created":1700000000,"model":"served-name","system_fingerprint":"fp-1",` +
		`"choices":[{"index":0,"delta":{"content":" { return }"},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}`
	chunkStop = `{"id":"chatcmpl-engine","object":"chat.completion.chunk","created":1700000000,"model":"served-name","system_fingerprint":"fp-1",` +
		`"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop","stop_reason":null}],"kv_transfer_params":{"k":[1]},"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}`
	chunkUsage = `{"id":"chatcmpl-engine","object":"chat.completion.chunk","created":1700000000,"model":"served-name","system_fingerprint":"fp-1",` +
		`"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}`
	done = "[DONE]"
)

// engineChunks is a whole stream's events, [DONE] aside.
var engineChunks = []string{chunkRole, chunkText, chunkMore, chunkStop, chunkUsage}

// sse encodes each data as one server-sent event, as engines do.
func sse(data ...string) string {
	var b strings.Builder
	for _, d := range data {
		b.WriteString("data: " + d + "\n\n")
	}
	return b.String()
}

// streamBody is a streaming chat request; extra is appended to its fields
// (",\"k\":v…").
func streamBody(model, extra string) []byte {
	return []byte(`{"model":"` + model + `","messages":[{"role":"user","content":"hi"}],"stream":true` + extra + `}`)
}

// trackedBody is an engine's answer body that records being closed.
type trackedBody struct {
	io.Reader
	closed atomic.Bool
}

func (b *trackedBody) Close() error {
	b.closed.Store(true)
	return nil
}

// bodyFunc makes an answer body for the request's context.
type bodyFunc func(ctx context.Context) io.Reader

// text is an answer body that reads s and ends.
func text(s string) bodyFunc {
	return func(context.Context) io.Reader { return strings.NewReader(s) }
}

// failAfter is an answer body that reads s, then fails with err.
func failAfter(s string, err error) bodyFunc {
	return func(context.Context) io.Reader { return io.MultiReader(strings.NewReader(s), iotest.ErrReader(err)) }
}

// hangAfter is an answer body that reads s, then blocks until the request's
// context ends and fails with its error, as an HTTP body does when the
// client goes away.
func hangAfter(s string) bodyFunc {
	return func(ctx context.Context) io.Reader { return &hangingReader{r: strings.NewReader(s), ctx: ctx} }
}

type hangingReader struct {
	r   io.Reader
	ctx context.Context
}

func (h *hangingReader) Read(p []byte) (int, error) {
	if n, err := h.r.Read(p); n > 0 || !errors.Is(err, io.EOF) {
		return n, err
	}
	<-h.ctx.Done()
	return 0, h.ctx.Err()
}

// scriptEngine answers the n-th request with status 200 and the n-th body
// (the last one again after that), and records every request and body.
type scriptEngine struct {
	mu     sync.Mutex
	bodies []bodyFunc
	calls  []call
	opened []*trackedBody
}

var _ gateway.Engine = (*scriptEngine)(nil)

func (e *scriptEngine) Open(ctx context.Context, endpoint, path string, body []byte, _ func()) (int, io.ReadCloser, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, call{endpoint: endpoint, path: path, body: slices.Clone(body)})
	b := &trackedBody{Reader: e.bodies[min(len(e.calls), len(e.bodies))-1](ctx)}
	e.opened = append(e.opened, b)
	return 200, b, nil
}

func (e *scriptEngine) requests() []call {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.calls)
}

func (e *scriptEngine) body(i int) *trackedBody {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.opened[i]
}

// newScriptFixture returns newFixture's gateway over a scriptEngine.
func newScriptFixture(bodies ...bodyFunc) (fixture, *scriptEngine) {
	f := newFixture()
	eng := &scriptEngine{bodies: bodies}
	rw := f.g.ReadyWait
	f.g = gateway.New(f.table, routing.NewDemand(), eng, f.pub, quiet)
	f.g.ReadyWait = rw
	return f, eng
}

// openStream makes a streaming chat call that must succeed.
func openStream(t *testing.T, g *gateway.Gateway, ctx context.Context, caller auth.Key, body []byte) *gateway.Stream {
	t.Helper()
	reply, err := g.Chat(ctx, gateway.Call{Caller: caller, RequestID: "req-s", Body: body})
	if err != nil {
		t.Fatalf("Chat: %v", err)
	}
	if reply.Stream == nil {
		t.Fatalf("reply has no stream (body %s)", reply.Body)
	}
	if reply.Body != nil {
		t.Errorf("streaming reply also has a body %s", reply.Body)
	}
	return reply.Stream
}

// drain calls Next until it fails and returns the chunks before that and
// the error.
func drain(t *testing.T, s *gateway.Stream) ([]string, error) {
	t.Helper()
	var out []string
	for range 100 {
		b, err := s.Next()
		if err != nil {
			if b != nil {
				t.Errorf("Next returned data %s with the error %v", b, err)
			}
			return out, err
		}
		out = append(out, string(b))
	}
	t.Fatal("stream did not end after 100 chunks")
	return nil, nil
}

// instanceOf returns the instance ID in one of newFixture's endpoints.
func instanceOf(endpoint string) string {
	return strings.TrimSuffix(strings.TrimPrefix(endpoint, "http://"), ".test/v1")
}

// checkEvents fails unless pub holds exactly one usage event for alice's
// chat call req-s, answered by instanceID with status and usage u (total
// aside, which must be their sum).
func checkEvents(t *testing.T, pub *fakePublisher, instanceID string, status int, u gateway.Usage) {
	t.Helper()
	evs := pub.published()
	if len(evs) != 1 {
		t.Fatalf("published %d events, want 1", len(evs))
	}
	ev, ok := evs[0].(events.RequestCompletedV1)
	if !ok {
		t.Fatalf("published %T, want events.RequestCompletedV1", evs[0])
	}
	want := events.RequestCompletedV1{
		Meta: ev.Meta, RequestID: "req-s", ServiceID: aliceChat.ID, OwnerID: alice.OwnerID,
		AccessName: aliceChat.AccessName, BaseModel: aliceChat.BaseModel, APIKeyID: alice.ID, InstanceID: instanceID,
		Endpoint: "/v1/chat/completions", Status: status,
		PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens, TotalTokens: u.PromptTokens + u.CompletionTokens,
		CachedTokens: u.PromptTokensDetails.CachedTokens,
		StartedAt:    ev.StartedAt, FinishedAt: ev.FinishedAt,
	}
	if ev != want {
		t.Errorf("usage event\n %+v, want\n %+v", ev, want)
	}
	if ev.ID == "" || ev.StartedAt.IsZero() || ev.FinishedAt.Before(ev.StartedAt) {
		t.Errorf("event ID %q, started %v, finished %v: want an ID and started <= finished", ev.ID, ev.StartedAt, ev.FinishedAt)
	}
}

// fields decodes a JSON object into its fields' raw values.
func fields(t *testing.T, b string) map[string]string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(b), &m); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	out := map[string]string{}
	for k, v := range m {
		out[k] = string(v)
	}
	return out
}

// clientChunk is engine chunk c as the client should get it: id and model
// set, usage kept or dropped, every other field as the engine wrote it.
func clientChunk(t *testing.T, c, id string, keepUsage bool) map[string]string {
	t.Helper()
	m := fields(t, c)
	m["id"], m["model"] = `"`+id+`"`, `"`+aliceChat.AccessName+`"`
	if !keepUsage {
		delete(m, "usage")
	}
	return m
}

// checkChunks fails unless got are the client's versions of engine chunks
// want, all with one Modelport id; runningUsage says whether chunks with
// choices keep their usage.
func checkChunks(t *testing.T, got, want []string, runningUsage bool) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d chunks, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	id := fields(t, got[0])["id"]
	var plain string
	if err := json.Unmarshal([]byte(id), &plain); err != nil || !completionID.MatchString(plain) {
		t.Fatalf("id = %s, want cmp- and 32 hex digits", id)
	}
	for i := range got {
		final := fields(t, want[i])["choices"] == "[]"
		if g, w := fields(t, got[i]), clientChunk(t, want[i], plain, final || runningUsage); !maps.Equal(g, w) {
			t.Errorf("chunk %d =\n %s, want the fields\n %v", i, got[i], w)
		}
	}
}

func TestStreamUpstreamOptions(t *testing.T) {
	const others = `,"temperature":0.2,"user":"<a&b>","max_tokens":64,"x_engine_extra":{"k":[1,"<>"]}`
	tests := []struct {
		name    string
		options string // the client's stream_options field, if any
	}{
		{name: "none"},
		{name: "null", options: `,"stream_options":null`},
		{name: "include_usage false", options: `,"stream_options":{"include_usage":false}`},
		{name: "include_usage", options: `,"stream_options":{"include_usage":true}`},
		{name: "continuous_usage_stats false", options: `,"stream_options":{"include_usage":true,"continuous_usage_stats":false}`},
		{name: "both", options: `,"stream_options":{"continuous_usage_stats":true,"include_usage":true}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, eng := newScriptFixture(text(sse(append(engineChunks, done)...)))
			body := streamBody(aliceChat.AccessName, others+tc.options)
			s := openStream(t, f.g, context.Background(), alice, body)
			if _, err := drain(t, s); err != io.EOF {
				t.Errorf("stream ended with %v, want io.EOF", err)
			}
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}

			reqs := eng.requests()
			if len(reqs) != 1 {
				t.Fatalf("engine called %d times, want 1", len(reqs))
			}
			if got, want := reqs[0].path, "/chat/completions"; got != want {
				t.Errorf("path = %q, want %q", got, want)
			}
			got, want := fields(t, string(reqs[0].body)), fields(t, string(body))
			var opts map[string]any
			if err := json.Unmarshal([]byte(got["stream_options"]), &opts); err != nil {
				t.Fatalf("upstream stream_options %s: %v", got["stream_options"], err)
			}
			if want := map[string]any{"include_usage": true, "continuous_usage_stats": true}; !reflect.DeepEqual(opts, want) {
				t.Errorf("upstream stream_options = %s, want %v", got["stream_options"], want)
			}
			delete(got, "stream_options")
			delete(want, "stream_options")
			if !maps.Equal(got, want) {
				t.Errorf("upstream fields =\n %v, want the client's\n %v", got, want)
			}
		})
	}
}

// TestStreamChunks: every chunk gets one Modelport id and the access name
// and keeps the engine's other fields; usage reaches the client only as it
// asked; the engine's final usage is metered whatever it asked.
func TestStreamChunks(t *testing.T) {
	tests := []struct {
		name         string
		options      string
		usageChunk   bool // the final chunk with choices [] is sent
		runningUsage bool // chunks with choices keep their usage
	}{
		{name: "no stream_options"},
		{name: "include_usage false", options: `,"stream_options":{"include_usage":false}`},
		{name: "include_usage", options: `,"stream_options":{"include_usage":true}`, usageChunk: true},
		{name: "include_usage and continuous_usage_stats", options: `,"stream_options":{"include_usage":true,"continuous_usage_stats":true}`, usageChunk: true, runningUsage: true},
		{name: "continuous_usage_stats only", options: `,"stream_options":{"continuous_usage_stats":true}`, runningUsage: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, eng := newScriptFixture(text(sse(append(engineChunks, done)...)))
			s := openStream(t, f.g, context.Background(), alice, streamBody(aliceChat.AccessName, tc.options))
			got, err := drain(t, s)
			if err != io.EOF {
				t.Errorf("stream ended with %v, want io.EOF", err)
			}
			want := engineChunks[:4]
			if tc.usageChunk {
				want = engineChunks
			}
			checkChunks(t, got, want, tc.runningUsage)
			for i, c := range got {
				if strings.Contains(c, `\u00`) {
					t.Errorf("chunk %d is HTML-escaped: %s", i, c)
				}
			}
			if !strings.Contains(got[1], `"content":"if a < b && c > d"`) {
				t.Errorf("chunk 1 = %s, want its content as the engine wrote it", got[1])
			}
			if tc.usageChunk {
				if got, want := fields(t, got[4])["usage"], `{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}`; got != want {
					t.Errorf("final usage = %s, want %s", got, want)
				}
			}
			if got := f.pub.published(); len(got) != 0 {
				t.Errorf("published %d events before Close, want none", len(got))
			}

			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			checkEvents(t, f.pub, instanceOf(eng.requests()[0].endpoint), 200, gateway.Usage{PromptTokens: 12, CompletionTokens: 3})
			if !eng.body(0).closed.Load() {
				t.Error("the engine's body was not closed")
			}
		})
	}
}

func TestStreamIDsDiffer(t *testing.T) {
	f, _ := newScriptFixture(text(sse(chunkText, done)))
	var ids []string
	for range 2 {
		s := openStream(t, f.g, context.Background(), alice, streamBody(aliceChat.AccessName, ""))
		got, _ := drain(t, s)
		s.Close()
		if len(got) != 1 {
			t.Fatalf("got %d chunks, want 1", len(got))
		}
		ids = append(ids, fields(t, got[0])["id"])
	}
	if ids[0] == ids[1] {
		t.Errorf("two streams share the id %s", ids[0])
	}
}

// TestStreamCutShort: a stream that ends before [DONE] is metered once,
// with the usage up to the cut, and the error says why.
func TestStreamCutShort(t *testing.T) {
	reset := errors.New("connection reset by peer")
	tests := []struct {
		name      string
		body      bodyFunc
		wantKind  errs.Kind
		wantMsg   string // a part of the error
		wantSent  int    // chunks the client got
		wantUsage gateway.Usage
		// wantOut says the instance must be out of rotation afterwards;
		// otherwise it is not checked.
		wantOut bool
	}{
		{
			name:      "engine ends without [DONE]",
			body:      text(sse(chunkRole, chunkText, chunkMore)),
			wantKind:  errs.Upstream,
			wantMsg:   "early",
			wantSent:  3,
			wantUsage: gateway.Usage{PromptTokens: 12, CompletionTokens: 2},
			wantOut:   true,
		},
		{
			name:      "engine connection breaks",
			body:      failAfter(sse(chunkRole, chunkText), reset),
			wantKind:  errs.Upstream,
			wantSent:  2,
			wantUsage: gateway.Usage{PromptTokens: 12, CompletionTokens: 1},
			wantOut:   true,
		},
		{
			name:      "engine sends an error event",
			body:      text(sse(chunkRole, chunkText, `{"error":{"message":"boom","type":"InternalServerError","param":null,"code":500}}`, done)),
			wantKind:  errs.Upstream,
			wantMsg:   "boom",
			wantSent:  2,
			wantUsage: gateway.Usage{PromptTokens: 12, CompletionTokens: 1},
		},
		{
			name:      "engine sends a malformed chunk",
			body:      text(sse(chunkRole, `{"id":`, done)),
			wantKind:  errs.Upstream,
			wantSent:  1,
			wantUsage: gateway.Usage{PromptTokens: 12},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, eng := newScriptFixture(tc.body, text(completion))
			s := openStream(t, f.g, context.Background(), alice, streamBody(aliceChat.AccessName, ""))
			got, err := drain(t, s)
			if err == io.EOF {
				t.Fatalf("stream ended with io.EOF after %d chunks, want an error", len(got))
			}
			checkErr(t, err, tc.wantKind, "")
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tc.wantMsg)
			}
			if got, want := len(got), tc.wantSent; got != want {
				t.Errorf("client got %d chunks, want %d", got, want)
			}
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			s.Close()
			failed := instanceOf(eng.requests()[0].endpoint)
			checkEvents(t, f.pub, failed, 502, tc.wantUsage)

			if tc.wantOut {
				// Keep the other instance busy: only a failed instance
				// loses to it.
				other, release, ok := f.table.Pick(aliceChat.ID, failed)
				if !ok {
					t.Fatal("no other instance")
				}
				defer release()
				if _, err := complete(f.g, context.Background(), alice, "req-2", chatBody(aliceChat.AccessName)); err != nil {
					t.Fatal(err)
				}
				if got, want := eng.requests()[1].endpoint, other.Instance.Endpoint; got != want {
					t.Errorf("next request went to %s, want %s: the instance that cut its stream short is still in rotation", got, want)
				}
			}
		})
	}
}

// TestStreamClientGoesAway: a cancelled request ends the stream with the
// context's error and is metered as 499 with the usage so far; the
// instance stays in rotation.
func TestStreamClientGoesAway(t *testing.T) {
	f, eng := newScriptFixture(hangAfter(sse(chunkRole, chunkText)), text(completion))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := openStream(t, f.g, ctx, alice, streamBody(aliceChat.AccessName, ""))
	for i := range 2 {
		if _, err := s.Next(); err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
	}
	cancel()
	if _, err := s.Next(); !errors.Is(err, context.Canceled) {
		t.Errorf("Next after the client went away = %v, want context.Canceled", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s.Close()
	inst := instanceOf(eng.requests()[0].endpoint)
	checkEvents(t, f.pub, inst, 499, gateway.Usage{PromptTokens: 12, CompletionTokens: 1})
	if !eng.body(0).closed.Load() {
		t.Error("the engine's body was not closed")
	}

	// The other instance busy, the next request goes to the same one.
	_, release, ok := f.table.Pick(aliceChat.ID, inst)
	if !ok {
		t.Fatal("no other instance")
	}
	defer release()
	if _, err := complete(f.g, context.Background(), alice, "req-2", chatBody(aliceChat.AccessName)); err != nil {
		t.Fatal(err)
	}
	if got, want := eng.requests()[1].endpoint, eng.requests()[0].endpoint; got != want {
		t.Errorf("next request went to %s, want %s: a client going away took the instance out of rotation", got, want)
	}
}

// TestStreamWithoutEngineUsage: an engine that reports no usage is billed
// its content chunks as completion tokens and the prompt's tokens as the
// router counts them; one that sent nothing is billed the prompt, since
// it read it.
func TestStreamWithoutEngineUsage(t *testing.T) {
	noUsage := func(content string) string {
		return `{"id":"e","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"` + content + `"},"finish_reason":null}]}`
	}
	role := `{"id":"e","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}`
	finish := `{"id":"e","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`
	// "hi" from the user: 3 tokens to prime the reply, 4 of markers, one
	// for the role and one for the text.
	const prompt = 9
	tests := []struct {
		name       string
		body       bodyFunc
		wantEOF    bool
		wantStatus int
		wantUsage  gateway.Usage
	}{
		{name: "finished", body: text(sse(role, noUsage("a"), noUsage("b"), noUsage("c"), finish, done)), wantEOF: true,
			wantStatus: 200, wantUsage: gateway.Usage{PromptTokens: prompt, CompletionTokens: 3}},
		{name: "cut short", body: text(sse(noUsage("a"), noUsage("b"))),
			wantStatus: 502, wantUsage: gateway.Usage{PromptTokens: prompt, CompletionTokens: 2}},
		{name: "nothing, then the end", body: text(""), wantStatus: 502, wantUsage: gateway.Usage{PromptTokens: prompt}},
		{name: "only comments, then the end", body: text(": ping\n\n: ping\n\n"), wantStatus: 502, wantUsage: gateway.Usage{PromptTokens: prompt}},
		{name: "nothing, then a broken connection", body: failAfter("", errors.New("connection reset by peer")), wantStatus: 502, wantUsage: gateway.Usage{PromptTokens: prompt}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, eng := newScriptFixture(tc.body)
			s := openStream(t, f.g, context.Background(), alice, streamBody(aliceChat.AccessName, `,"stream_options":{"include_usage":true,"continuous_usage_stats":true}`))
			got, err := drain(t, s)
			if gotEOF := err == io.EOF; gotEOF != tc.wantEOF {
				t.Errorf("stream ended with %v, want io.EOF %v", err, tc.wantEOF)
			}
			for i, c := range got {
				if _, ok := fields(t, c)["usage"]; ok {
					t.Errorf("chunk %d has usage the engine did not send: %s", i, c)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			s.Close()
			checkEvents(t, f.pub, instanceOf(eng.requests()[0].endpoint), tc.wantStatus, tc.wantUsage)
		})
	}
}

// TestStreamSSEParsing: the same events, however the engine frames them,
// reach the client the same.
func TestStreamSSEParsing(t *testing.T) {
	want := []string{chunkRole, chunkText, chunkStop}
	plain := sse(append(slices.Clone(want), done)...)
	// split cuts each chunk into two data lines before its choices.
	split := func(c string) string {
		i := strings.Index(c, `,"choices"`)
		return "data: " + c[:i] + "\ndata: " + c[i:] + "\n\n"
	}
	tests := []struct {
		name string
		body string
	}{
		{name: "blank-line separated", body: plain},
		{name: "comments", body: ": ping\n\n" + sse(chunkRole) + ":keep-alive\n" + sse(chunkText) + ": ping\n\n: ping\n\n" + sse(chunkStop, done)},
		{name: "other fields", body: "event: message\nid: 1\nretry: 1000\n" + sse(chunkRole) + "event: message\n" + sse(chunkText, chunkStop) + "event: done\n" + sse(done)},
		{name: "no space after the colon", body: strings.ReplaceAll(plain, "data: ", "data:")},
		{name: "CRLF line endings", body: strings.ReplaceAll(plain, "\n", "\r\n")},
		{name: "multi-line data", body: split(chunkRole) + split(chunkText) + split(chunkStop) + sse(done)},
		{name: "several blank lines between events", body: strings.ReplaceAll(plain, "\n\n", "\n\n\n\n")},
		{name: "last event without a newline", body: strings.TrimSuffix(plain, "\n\n")},
		{name: "last event without a blank line", body: strings.TrimSuffix(plain, "\n")},
		{name: "last event without a blank line, CRLF", body: strings.TrimSuffix(strings.ReplaceAll(plain, "\n", "\r\n"), "\r\n")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, eng := newScriptFixture(text(tc.body))
			s := openStream(t, f.g, context.Background(), alice, streamBody(aliceChat.AccessName, ""))
			got, err := drain(t, s)
			if err != io.EOF {
				t.Errorf("stream ended with %v, want io.EOF", err)
			}
			checkChunks(t, got, want, false)
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			checkEvents(t, f.pub, instanceOf(eng.requests()[0].endpoint), 200, gateway.Usage{PromptTokens: 12, CompletionTokens: 3})
		})
	}
}

// TestStreamEngineErrorBeforeStreaming: an engine that refuses a streaming
// request gets the client an error, not a stream, and nothing is billed.
func TestStreamEngineErrorBeforeStreaming(t *testing.T) {
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
		{name: "429", answer: answer{status: 429, body: `{"error":{"message":"too many requests"}}`}, wantKind: errs.RateLimited},
		{name: "500", answer: answer{status: 500, body: `{"error":{"message":"CUDA out of memory"}}`}, wantKind: errs.Upstream, wantMsg: "500"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture()
			f.eng.set(instance(aliceChat, "i-a1").Endpoint, tc.answer)
			f.eng.set(instance(aliceChat, "i-a2").Endpoint, tc.answer)
			reply, err := f.g.Chat(context.Background(), gateway.Call{Caller: alice, RequestID: "req-s", Body: streamBody(aliceChat.AccessName, "")})
			e := checkErr(t, err, tc.wantKind, tc.wantParam)
			if !strings.Contains(e.Error(), tc.wantMsg) {
				t.Errorf("error %q does not contain %q", e.Error(), tc.wantMsg)
			}
			if reply != nil {
				t.Errorf("got reply %+v with the error", reply)
			}
			if got, want := len(f.eng.endpoints()), 1; got != want {
				t.Errorf("engine called %d times, want %d", got, want)
			}
			if got := f.pub.published(); len(got) != 0 {
				t.Errorf("published %d events, want none", len(got))
			}
		})
	}
}

func TestErrorEvent(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantMsg  string
		wantCode string
	}{
		{name: "upstream, cause hidden", err: errs.Wrap(errs.Upstream, errors.New("read tcp 10.0.0.7:8000: connection reset"), "the engine's stream broke"),
			wantMsg: "the engine's stream broke", wantCode: "upstream_error"},
		{name: "invalid with a param", err: errs.InvalidParam("max_tokens", "max_tokens must be at least 1"),
			wantMsg: "max_tokens must be at least 1", wantCode: "invalid"},
		{name: "wrapped timeout", err: errors.Join(errors.New("x"), errs.E(errs.Timeout, "the engine timed out")),
			wantMsg: "the engine timed out", wantCode: "timeout"},
		{name: "internal", err: errs.E(errs.Internal, "nats password rejected for user router"),
			wantMsg: "internal error", wantCode: "internal"},
		{name: "plain error", err: errors.New("clickhouse: password for user router rejected"),
			wantMsg: "internal error", wantCode: "internal"},
		{name: "context cancelled", err: context.Canceled,
			wantMsg: "internal error", wantCode: "internal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := gateway.ErrorEvent(tc.err)
			var got any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("ErrorEvent = %s: %v", b, err)
			}
			want := map[string]any{"error": map[string]any{
				"message": tc.wantMsg, "type": "server_error", "param": nil, "code": tc.wantCode,
			}}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("ErrorEvent = %s, want %v", b, want)
			}
		})
	}
}
