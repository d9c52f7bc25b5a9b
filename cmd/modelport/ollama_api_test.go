package main

// The OpenAI endpoints beyond chat on a real engine: Ollama serving the
// tiny random-weights model, as a text service (legacy completions and
// the Responses API) and as an embedding service.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/config"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
)

// TestOllamaAPIBreadth registers the tiny GGUF model for text generation
// and embeddings, deploys a service of each on Ollama, and drives them
// with the official Go client: every answer is the one Ollama gives the
// same request at its own OpenAI API, and billing holds exactly the usage
// the client was told.
func TestOllamaAPIBreadth(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real engine")
	}
	chAddr, chDB := chtest.New(t)
	settings := map[string]string{"MODELPORT_WORKER_CAPACITY": "2"}
	maps.Copy(settings, ollamaEngine(t))
	ollamaStore(t)
	p, err := startPlatform(context.Background(), config.Chain(config.Map(settings), testEnv(t, chAddr, chDB)), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	if len(p.ModelDirs) == 0 {
		t.Fatal("the platform has no model store")
	}
	weights := filepath.Join(p.ModelDirs[0], "tiny.gguf")
	if err := testmodel([]string{"-o", weights}, io.Discard, io.Discard); err != nil {
		t.Fatalf("modelport testmodel: %v", err)
	}
	var model apiModel
	if s := call(t, "POST", p.BaseURL+"/api/v1/models", testAdminKey, map[string]any{
		"name": "tiny-multi", "source": "file://" + weights, "context_length": 1024, "tasks": []string{"text-generation", "embedding"},
	}, &model); s != http.StatusCreated || model.Engine != "ollama" {
		t.Fatalf("register the tiny model for text and embeddings: status %d, %+v", s, model)
	}
	deploy := func(name, task string) (service, string) {
		var svc service
		if s := call(t, "POST", p.BaseURL+"/api/v1/services", testAdminKey, map[string]any{
			"name": name, "base_model": model.Name, "task": task,
		}, &svc); s != http.StatusCreated {
			t.Fatalf("create %s: status %d (%+v)", name, s, svc)
		}
		var engine string
		eventually(t, 2*time.Minute, name+" running on Ollama", func() error {
			var got service
			call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID, testAdminKey, nil, &got)
			var list []struct {
				Engine   string `json:"engine"`
				Endpoint string `json:"endpoint"`
			}
			call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID+"/instances", testAdminKey, nil, &list)
			if got.Status != "running" || len(list) != 1 || list[0].Engine != "ollama" {
				return fmt.Errorf("status %s, instances %+v", got.Status, list)
			}
			engine = list[0].Endpoint
			return nil
		})
		return svc, engine
	}
	text, textEngine := deploy("text", "text-generation")
	embed, embedEngine := deploy("embed", "embedding")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	client := openai.NewClient(option.WithBaseURL(p.BaseURL+"/v1/"), option.WithAPIKey(testAdminKey), option.WithMaxRetries(0))
	billed := map[string]*usageTotals{text.ID: {ServiceID: text.ID}, embed.ID: {ServiceID: embed.ID}}
	bill := func(svc string, prompt, completion int64) {
		b := billed[svc]
		b.Requests++
		b.PromptTokens += uint64(prompt)
		b.CompletionTokens += uint64(completion)
		b.TotalTokens += uint64(prompt + completion)
	}
	// native is Ollama's own answer at its OpenAI API, for comparison.
	native := func(t *testing.T, endpoint, path string, body map[string]any, out any) {
		t.Helper()
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Post(endpoint+path, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || json.Unmarshal(raw, out) != nil {
			t.Fatalf("Ollama's own %s: %s: %s", path, resp.Status, raw)
		}
	}

	t.Run("legacy completions", func(t *testing.T) {
		const prompt = "Say this is a test"
		resp, err := client.Completions.New(ctx, openai.CompletionNewParams{Model: openai.CompletionNewParamsModel(text.AccessName),
			Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String(prompt)}, MaxTokens: openai.Int(8), Temperature: openai.Float(0)})
		if err != nil {
			t.Fatal(err)
		}
		var own openai.Completion
		native(t, textEngine, "/completions", map[string]any{"model": text.AccessName, "prompt": prompt, "max_tokens": 8, "temperature": 0}, &own)
		if len(resp.Choices) != 1 || resp.Model != text.AccessName || !strings.HasPrefix(resp.ID, "cmp-") ||
			resp.Choices[0].Text != own.Choices[0].Text || !sameUsage(resp.Usage, own.Usage) || resp.Usage.CompletionTokens != 8 {
			t.Errorf("completion %q, usage %+v; Ollama's own: %q, usage %+v", resp.Choices[0].Text, resp.Usage, own.Choices[0].Text, own.Usage)
		}
		bill(text.ID, resp.Usage.PromptTokens, resp.Usage.CompletionTokens)

		stream := client.Completions.NewStreaming(ctx, openai.CompletionNewParams{Model: openai.CompletionNewParamsModel(text.AccessName),
			Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String(prompt)}, MaxTokens: openai.Int(8), Temperature: openai.Float(0),
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}})
		var got strings.Builder
		var usage openai.CompletionUsage
		for stream.Next() {
			c := stream.Current()
			for _, ch := range c.Choices {
				got.WriteString(ch.Text)
			}
			if c.JSON.Usage.Valid() {
				usage = c.Usage
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if got.String() != resp.Choices[0].Text || !sameUsage(usage, resp.Usage) {
			t.Errorf("streamed %q, usage %+v; want the whole answer %q, usage %+v", got.String(), usage, resp.Choices[0].Text, resp.Usage)
		}
		bill(text.ID, usage.PromptTokens, usage.CompletionTokens)
	})

	t.Run("embeddings", func(t *testing.T) {
		input := []string{"The food was delicious.", "The waiter was kind."}
		for _, format := range []openai.EmbeddingNewParamsEncodingFormat{openai.EmbeddingNewParamsEncodingFormatFloat, ""} {
			resp, err := client.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: openai.EmbeddingModel(embed.AccessName),
				Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: input}, EncodingFormat: format})
			if err != nil {
				t.Fatal(err)
			}
			var own openai.CreateEmbeddingResponse
			native(t, embedEngine, "/embeddings", map[string]any{"model": embed.AccessName, "input": input}, &own)
			if len(resp.Data) != 2 || resp.Model != embed.AccessName || resp.Usage.PromptTokens != own.Usage.PromptTokens || resp.Usage.PromptTokens == 0 {
				t.Fatalf("format %q: %d vectors, model %q, usage %+v; Ollama's own usage %+v", format, len(resp.Data), resp.Model, resp.Usage, own.Usage)
			}
			for i := range resp.Data {
				// As long as the model's embedding length: the tiny model's 64.
				if a, b := resp.Data[i].Embedding, own.Data[i].Embedding; len(a) != 64 || fmt.Sprint(a) != fmt.Sprint(b) {
					t.Errorf("format %q: vector %d (%d dimensions) differs from Ollama's own (%d), or is not 64 long", format, i, len(a), len(b))
				}
			}
			bill(embed.ID, resp.Usage.PromptTokens, 0)
		}

		short, err := client.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: openai.EmbeddingModel(embed.AccessName),
			Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String(input[0])}, Dimensions: openai.Int(4)})
		if err != nil {
			t.Fatal(err)
		}
		if len(short.Data) != 1 || len(short.Data[0].Embedding) != 4 {
			t.Errorf("dimensions 4: %+v", short.Data)
		}
		bill(embed.ID, short.Usage.PromptTokens, 0)
	})

	t.Run("responses", func(t *testing.T) {
		// A response is the chat answer to the same conversation: the
		// instructions as a system message, then the input.
		const instructions, input = "Be brief.", "Say this is a test!"
		resp, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: text.AccessName, Instructions: openai.String(instructions),
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String(input)}, MaxOutputTokens: openai.Int(10), Temperature: openai.Float(0)})
		if err != nil {
			t.Fatal(err)
		}
		var own openai.ChatCompletion
		native(t, textEngine, "/chat/completions", map[string]any{"model": text.AccessName, "max_tokens": 10, "temperature": 0,
			"messages": []map[string]string{{"role": "system", "content": instructions}, {"role": "user", "content": input}}}, &own)
		if !strings.HasPrefix(resp.ID, "resp_") || resp.Status != "incomplete" || resp.OutputText() != own.Choices[0].Message.Content ||
			resp.Usage.InputTokens != own.Usage.PromptTokens || resp.Usage.OutputTokens != own.Usage.CompletionTokens {
			t.Errorf("response %q (%s), %d+%d tokens; Ollama's own chat answer %q (%s), %d+%d tokens", resp.OutputText(), resp.Status,
				resp.Usage.InputTokens, resp.Usage.OutputTokens, own.Choices[0].Message.Content, own.Choices[0].FinishReason,
				own.Usage.PromptTokens, own.Usage.CompletionTokens)
		}
		bill(text.ID, resp.Usage.InputTokens, resp.Usage.OutputTokens)

		stream := client.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: text.AccessName, Instructions: openai.String(instructions),
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String(input)}, MaxOutputTokens: openai.Int(10), Temperature: openai.Float(0)})
		var deltas strings.Builder
		var final responses.Response
		for stream.Next() {
			switch ev := stream.Current(); ev.Type {
			case "response.output_text.delta":
				deltas.WriteString(ev.Delta)
			case "response.completed", "response.incomplete":
				final = ev.Response
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if deltas.String() != resp.OutputText() || final.OutputText() != resp.OutputText() || final.Usage.OutputTokens != resp.Usage.OutputTokens {
			t.Errorf("streamed %q (final %q, %d tokens); want %q, %d tokens", deltas.String(), final.OutputText(), final.Usage.OutputTokens,
				resp.OutputText(), resp.Usage.OutputTokens)
		}
		bill(text.ID, final.Usage.InputTokens, final.Usage.OutputTokens)
	})

	for id, want := range billed {
		eventually(t, 30*time.Second, "usage of "+id, func() error {
			got, err := usageOf(t, p.BaseURL, id)
			if err != nil || got != *want {
				return fmt.Errorf("billed %+v (%v), want %+v", got, err, *want)
			}
			return nil
		})
	}
}

// sameUsage compares the token counts of two usages.
func sameUsage(a, b openai.CompletionUsage) bool {
	return a.PromptTokens == b.PromptTokens && a.CompletionTokens == b.CompletionTokens && a.TotalTokens == b.TotalTokens
}
