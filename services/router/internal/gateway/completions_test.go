package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/gateway"
)

// aliceEmbed is alice's embedding service, with instance i-e1.
var aliceEmbed = state.Service{
	ID: "s-alice-embed", OwnerID: alice.OwnerID, Name: "embed", AccessName: "u-" + alice.OwnerID + "/embed",
	BaseModel: "nomic-embed-text-v1.5", Task: state.TaskEmbedding, Engine: "simulator", Instances: 1,
	Status: state.StatusRunning, CreatedAt: time.Date(2025, 1, 5, 0, 0, 0, 0, time.UTC),
}

// newEndpointsFixture is newFixture with alice's embedding service.
func newEndpointsFixture() fixture {
	f := newFixture()
	f.table.PutService(aliceEmbed)
	f.table.PutInstance(instance(aliceEmbed, "i-e1"))
	return f
}

// A legacy completion as engines write it.
const textCompletion = `{"id":"cmpl-engine","object":"text_completion","created":1700000000,"model":"served-name",` +
	`"choices":[{"text":"if a < b","index":0,"logprobs":null,"finish_reason":"length"}],` +
	`"usage":{"prompt_tokens":4,"completion_tokens":5,"total_tokens":9},"system_fingerprint":"fp-1"}`

// relayCall calls one of the gateway's relayed endpoints.
func relayCall(serve func(context.Context, gateway.Call) (*gateway.Reply, error), ctx context.Context, caller auth.Key, body string) (*gateway.Reply, error) {
	return serve(ctx, gateway.Call{Caller: caller, RequestID: "req-1", Body: []byte(body)})
}

// onlyUsage returns the one usage event published.
func onlyUsage(t *testing.T, f fixture) events.RequestCompletedV1 {
	t.Helper()
	evs := f.pub.published()
	if len(evs) != 1 {
		t.Fatalf("%d usage events, want 1: %+v", len(evs), evs)
	}
	return evs[0].(events.RequestCompletedV1)
}

func TestCompletions(t *testing.T) {
	f := newEndpointsFixture()
	f.eng.set("http://i-a1.test/v1", answer{status: 200, body: textCompletion})
	f.eng.set("http://i-a2.test/v1", answer{status: 200, body: textCompletion})
	body := `{"model":"` + aliceChat.AccessName + `","prompt":"Say this is a test","max_tokens":5,"echo":false,"x_engine_option":1}`
	reply, err := relayCall(f.g.Completions, context.Background(), alice, body)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(reply.Body, &got); err != nil {
		t.Fatal(err)
	}
	if id, _ := got["id"].(string); !strings.HasPrefix(id, "cmp-") || got["model"] != aliceChat.AccessName || got["object"] != "text_completion" {
		t.Errorf("answer %s: want Modelport's id and the access name", reply.Body)
	}
	if !strings.Contains(string(reply.Body), `"text":"if a < b"`) {
		t.Errorf("text not relayed verbatim: %s", reply.Body)
	}
	c := f.eng.calls[0]
	if c.path != "/completions" || string(c.body) != body {
		t.Errorf("engine got %s %s; want /completions with the body as sent", c.path, c.body)
	}
	ev := onlyUsage(t, f)
	if ev.Endpoint != "/v1/completions" || ev.Status != 200 || ev.PromptTokens != 4 || ev.CompletionTokens != 5 || ev.TotalTokens != 9 {
		t.Errorf("metered %+v; want /v1/completions 200 with the engine's 4+5", ev)
	}
}

func TestCompletionsStream(t *testing.T) {
	chunks := []string{
		`{"id":"cmpl-e","object":"text_completion","created":1,"model":"served-name","choices":[{"text":"Hello","index":0,"logprobs":null,"finish_reason":null}]}`,
		`{"id":"cmpl-e","object":"text_completion","created":1,"model":"served-name","choices":[{"text":" there","index":0,"logprobs":null,"finish_reason":"stop"}]}`,
		`{"id":"cmpl-e","object":"text_completion","created":1,"model":"served-name","choices":[],"usage":{"prompt_tokens":6,"completion_tokens":2,"total_tokens":8}}`,
	}
	for _, includeUsage := range []bool{false, true} {
		f := newEndpointsFixture()
		for _, ep := range []string{"http://i-a1.test/v1", "http://i-a2.test/v1"} {
			f.eng.set(ep, answer{status: 200, body: sse(append(chunks, done)...)})
		}
		opts := ""
		if includeUsage {
			opts = `,"stream_options":{"include_usage":true}`
		}
		reply, err := relayCall(f.g.Completions, context.Background(), alice, `{"model":"`+aliceChat.AccessName+`","prompt":"hi","stream":true`+opts+`}`)
		if err != nil {
			t.Fatal(err)
		}
		if reply.Stream == nil {
			t.Fatal("no stream")
		}
		var text strings.Builder
		var n, usages int
		for {
			data, err := reply.Stream.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			n++
			var c struct {
				ID      string `json:"id"`
				Model   string `json:"model"`
				Choices []struct {
					Text string `json:"text"`
				} `json:"choices"`
				Usage json.RawMessage `json:"usage"`
			}
			if err := json.Unmarshal(data, &c); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(c.ID, "cmp-") || c.Model != aliceChat.AccessName {
				t.Errorf("chunk %s: want Modelport's id and the access name", data)
			}
			for _, ch := range c.Choices {
				text.WriteString(ch.Text)
			}
			if len(c.Usage) > 0 {
				usages++
			}
		}
		if err := reply.Stream.Close(); err != nil {
			t.Fatal(err)
		}
		wantUsages := 0
		if includeUsage {
			wantUsages = 1
		}
		if text.String() != "Hello there" || usages != wantUsages || n != 2+wantUsages {
			t.Errorf("include_usage %v: text %q, %d chunks, %d with usage", includeUsage, text.String(), n, usages)
		}
		if b := string(f.eng.calls[0].body); !strings.Contains(b, `"stream_options":{"include_usage":true`) {
			t.Errorf("the engine was not asked for usage: %s", b)
		}
		ev := onlyUsage(t, f)
		if ev.Endpoint != "/v1/completions" || ev.Status != 200 || ev.PromptTokens != 6 || ev.CompletionTokens != 2 {
			t.Errorf("metered %+v; want /v1/completions 200 with 6+2", ev)
		}
	}
}

func TestCompletionsStreamWithoutUsageCountsText(t *testing.T) {
	f := newEndpointsFixture()
	chunk := `{"id":"e","object":"text_completion","choices":[{"text":"word","index":0,"finish_reason":null}]}`
	for _, ep := range []string{"http://i-a1.test/v1", "http://i-a2.test/v1"} {
		f.eng.set(ep, answer{status: 200, body: sse(chunk, chunk, chunk)}) // cut before [DONE]
	}
	reply, err := relayCall(f.g.Completions, context.Background(), alice, `{"model":"`+aliceChat.AccessName+`","prompt":["Say this is a test"],"stream":true}`)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := reply.Stream.Next(); err != nil {
			break
		}
	}
	_ = reply.Stream.Close()
	ev := onlyUsage(t, f)
	// "Say this is a test" is 5 cl100k_base tokens, counted as they are:
	// a legacy prompt has no chat template.
	if ev.Endpoint != "/v1/completions" || ev.Status != 502 || ev.PromptTokens != 5 || ev.CompletionTokens != 3 {
		t.Errorf("metered %+v; want 502 with the prompt's 5 tokens and a token per text chunk", ev)
	}
}

func TestCompletionsRejects(t *testing.T) {
	for _, tc := range []struct {
		name, body, param, msg string
		kind                   errs.Kind
	}{
		{"no prompt", `{"model":"` + aliceChat.AccessName + `"}`, "prompt", "required", errs.Invalid},
		{"prompt an object", `{"model":"` + aliceChat.AccessName + `","prompt":{}}`, "prompt", "must be", errs.Invalid},
		{"empty prompt list", `{"model":"` + aliceChat.AccessName + `","prompt":[]}`, "prompt", "must be", errs.Invalid},
		{"empty token array", `{"model":"` + aliceChat.AccessName + `","prompt":[[1],[]]}`, "prompt", "empty", errs.Invalid},
		{"no model", `{"prompt":"x"}`, "model", "required", errs.Invalid},
		{"max_tokens a string", `{"model":"m","prompt":"x","max_tokens":"5"}`, "max_tokens", "", errs.Invalid},
		{"stop a number", `{"model":"` + aliceChat.AccessName + `","prompt":"x","stop":5}`, "stop", "", errs.Invalid},
		{"an embedding service", `{"model":"` + aliceEmbed.AccessName + `","prompt":"x"}`, "model", "/v1/embeddings", errs.Invalid},
		{"an image-generation service", `{"model":"` + aliceImage.AccessName + `","prompt":"x"}`, "model", "images/generations", errs.Invalid},
		{"another owner's service", `{"model":"` + bobChat.AccessName + `","prompt":"x"}`, "model", "", errs.NotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newEndpointsFixture()
			_, err := relayCall(f.g.Completions, context.Background(), alice, tc.body)
			e := checkErr(t, err, tc.kind, tc.param)
			if !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("message %q does not say %q", e.Msg, tc.msg)
			}
			if len(f.eng.calls) != 0 || len(f.pub.published()) != 0 {
				t.Errorf("engine called or usage metered for a refused request")
			}
		})
	}
}

// TestCutShortUsageChunk: a legacy completion stream cut short tells a
// client that asked for usage what was billed in a text_completion
// chunk; a Responses stream has no such chunk, its usage being only in
// its last event.
func TestCutShortUsageChunk(t *testing.T) {
	chunk := `{"id":"e","object":"text_completion","choices":[{"text":"word","index":0,"finish_reason":null}],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}`
	for _, tc := range []struct {
		name, body string
		serve      func(*gateway.Gateway) func(context.Context, gateway.Call) (*gateway.Reply, error)
		want       string // the chunk's object, "" for none
	}{
		{"completions", `{"model":"` + aliceChat.AccessName + `","prompt":"x","stream":true,"stream_options":{"include_usage":true}}`,
			func(g *gateway.Gateway) func(context.Context, gateway.Call) (*gateway.Reply, error) {
				return g.Completions
			}, "text_completion"},
		{"completions without asking", `{"model":"` + aliceChat.AccessName + `","prompt":"x","stream":true}`,
			func(g *gateway.Gateway) func(context.Context, gateway.Call) (*gateway.Reply, error) {
				return g.Completions
			}, ""},
		{"responses", `{"model":"` + aliceChat.AccessName + `","input":"x","stream":true}`,
			func(g *gateway.Gateway) func(context.Context, gateway.Call) (*gateway.Reply, error) {
				return g.Responses
			}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newEndpointsFixture()
			setAll(f, answer{status: 200, body: sse(chunk)}) // cut before [DONE]
			reply, err := relayCall(tc.serve(f.g), context.Background(), alice, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			for {
				if _, err := reply.Stream.Next(); err != nil {
					break
				}
			}
			_ = reply.Stream.Close()
			got := reply.Stream.UsageChunk()
			if tc.want == "" {
				if got != nil {
					t.Errorf("usage chunk %s, want none", got)
				}
				return
			}
			var c struct {
				Object string        `json:"object"`
				Usage  gateway.Usage `json:"usage"`
			}
			if err := json.Unmarshal(got, &c); err != nil || c.Object != tc.want || c.Usage != (gateway.Usage{PromptTokens: 4, CompletionTokens: 1, TotalTokens: 5}) {
				t.Errorf("usage chunk %s, want a %s chunk with 4+1", got, tc.want)
			}
		})
	}
}
