package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/modelport/modelport/services/router/internal/routing"
)

// An embeddings answer as engines write it; some engines report
// completion tokens, which an embedding never has.
const embeddingsAnswer = `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.6,0.8]}],"model":"served-name",` +
	`"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}`

func TestEmbeddings(t *testing.T) {
	f := newEndpointsFixture()
	f.eng.set("http://i-e1.test/v1", answer{status: 200, body: embeddingsAnswer})
	body := `{"model":"` + aliceEmbed.AccessName + `","input":["a b c","d"],"encoding_format":"float","dimensions":2}`
	reply, err := relayCall(f.g.Embeddings, context.Background(), alice, body)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Object string `json:"object"`
		Model  string `json:"model"`
		Data   []struct {
			Embedding []float64 `json:"embedding"`
		} `json:"data"`
	}
	if err := json.Unmarshal(reply.Body, &got); err != nil {
		t.Fatal(err)
	}
	if got.Object != "list" || got.Model != aliceEmbed.AccessName || len(got.Data) != 1 || len(got.Data[0].Embedding) != 2 {
		t.Errorf("answer %s", reply.Body)
	}
	c := f.eng.calls[0]
	if c.path != "/embeddings" || string(c.body) != body {
		t.Errorf("engine got %s %s; want /embeddings with the body as sent", c.path, c.body)
	}
	ev := onlyUsage(t, f)
	if ev.Endpoint != "/v1/embeddings" || ev.Status != 200 || ev.PromptTokens != 7 || ev.CompletionTokens != 0 || ev.TotalTokens != 7 {
		t.Errorf("metered %+v; want /v1/embeddings with the input's 7 tokens as prompt tokens only", ev)
	}
}

func TestEmbeddingsRejects(t *testing.T) {
	for _, tc := range []struct {
		name, body, param, msg string
	}{
		{"a chat service", `{"model":"` + aliceChat.AccessName + `","input":"x"}`, "model", "text-generation service"},
		{"an image-generation service", `{"model":"` + aliceImage.AccessName + `","input":"x"}`, "model", "image-generation service"},
		{"no input", `{"model":"` + aliceEmbed.AccessName + `"}`, "input", "required"},
		{"an empty string", `{"model":"` + aliceEmbed.AccessName + `","input":["a",""]}`, "input", "empty"},
		{"input a number", `{"model":"` + aliceEmbed.AccessName + `","input":5}`, "input", "must be"},
		{"unknown encoding", `{"model":"` + aliceEmbed.AccessName + `","input":"x","encoding_format":"int8"}`, "encoding_format", "float or base64"},
		{"dimensions 0", `{"model":"` + aliceEmbed.AccessName + `","input":"x","dimensions":0}`, "dimensions", "at least 1"},
		{"dimensions a string", `{"model":"` + aliceEmbed.AccessName + `","input":"x","dimensions":"8"}`, "dimensions", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newEndpointsFixture()
			_, err := relayCall(f.g.Embeddings, context.Background(), alice, tc.body)
			e := checkErr(t, err, errs.Invalid, tc.param)
			if !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("message %q does not say %q", e.Msg, tc.msg)
			}
			if len(f.eng.calls) != 0 || len(f.pub.published()) != 0 {
				t.Errorf("engine called or usage metered for a refused request")
			}
		})
	}
}

// TestChatRefusesEmbeddingService: a chat request to an embedding
// service is a 400 naming model.
func TestChatRefusesEmbeddingService(t *testing.T) {
	f := newEndpointsFixture()
	_, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceEmbed.AccessName))
	e := checkErr(t, err, errs.Invalid, "model")
	if !strings.Contains(e.Msg, "embedding service") {
		t.Errorf("message %q", e.Msg)
	}
}

// TestEmbeddingsClientGone: an embedding request whose client went away
// once the engine had it is metered as 499 with its input's counted
// tokens.
func TestEmbeddingsClientGone(t *testing.T) {
	f := newEndpointsFixture()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g := gateway.New(f.table, routing.NewDemand(), engineFunc(func(context.Context) (int, io.ReadCloser, error) {
		cancel()
		return 0, nil, &gateway.EngineError{Sent: true, Err: context.Canceled}
	}), f.pub, quiet)
	_, err := relayCall(g.Embeddings, ctx, alice, `{"model":"`+aliceEmbed.AccessName+`","input":["Say this is a test","hi"]}`)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	// 5 cl100k_base tokens and 1.
	if ev := onlyUsage(t, f); ev.Endpoint != "/v1/embeddings" || ev.Status != 499 || ev.PromptTokens != 6 || ev.CompletionTokens != 0 {
		t.Errorf("metered %+v; want 499 with the input's 6 tokens", ev)
	}
}
