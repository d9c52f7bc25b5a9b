package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"image"
	"image/png"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/chtest"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
)

// TestOpenAIClient drives the router with the official Go client across
// the API surface: chat with and without streaming, models, image
// understanding and generation, and the typed errors. At the end billing
// must hold exactly the usage every answer reported.
func TestOpenAIClient(t *testing.T) {
	chAddr, chDB := chtest.New(t)
	p, err := startPlatform(context.Background(), testEnv(t, chAddr, chDB), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	text := deployRunning(t, p.BaseURL, "text", "qwen2.5-7b-instruct", "text-generation")
	vision := deployRunning(t, p.BaseURL, "vision", "qwen2-vl-7b-instruct", "image-understanding")
	painter := deployRunning(t, p.BaseURL, "painter", "stable-diffusion-xl", "image-generation")
	embedder := deployRunning(t, p.BaseURL, "embedder", "nomic-embed-text-v1.5", "embedding")
	client := openai.NewClient(option.WithBaseURL(p.BaseURL+"/v1/"), option.WithAPIKey(testAdminKey), option.WithMaxRetries(0))
	billed := map[string]*usageTotals{text.ID: {ServiceID: text.ID}, vision.ID: {ServiceID: vision.ID}, painter.ID: {ServiceID: painter.ID},
		embedder.ID: {ServiceID: embedder.ID}}
	bill := func(svc string, prompt, completion int64) {
		b := billed[svc]
		b.Requests++
		b.PromptTokens += uint64(prompt)
		b.CompletionTokens += uint64(completion)
		b.TotalTokens += uint64(prompt + completion)
	}
	user := func(s string) []openai.ChatCompletionMessageParamUnion {
		return []openai.ChatCompletionMessageParamUnion{openai.UserMessage(s)}
	}

	t.Run("chat", func(t *testing.T) {
		resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: text.AccessName, Messages: user("Say this is a test!"),
			Temperature: openai.Float(0.7), TopP: openai.Float(0.9), Seed: openai.Int(7), N: openai.Int(2),
			Stop: openai.ChatCompletionNewParamsStopUnion{OfStringArray: []string{"never-appears"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Choices) != 2 || resp.Choices[0].Message.Content == resp.Choices[1].Message.Content {
			t.Errorf("n=2: choices %+v", resp.Choices)
		}
		if !strings.Contains(resp.RawJSON(), `"tool_calls":[]`) {
			t.Errorf("answer without tool_calls []: %s", resp.RawJSON())
		}
		bill(text.ID, resp.Usage.PromptTokens, resp.Usage.CompletionTokens)
	})

	t.Run("tool call", func(t *testing.T) {
		resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: text.AccessName, Messages: user("What's the weather in Paris?"),
			Tools: []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(openai.FunctionDefinitionParam{
				Name:       "get_weather",
				Parameters: openai.FunctionParameters{"type": "object", "properties": map[string]any{"city": map[string]any{"type": "string"}}, "required": []string{"city"}},
			})},
			ToolChoice: openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("required")},
		})
		if err != nil {
			t.Fatal(err)
		}
		calls := resp.Choices[0].Message.ToolCalls
		if len(calls) != 1 || calls[0].Function.Name != "get_weather" || !strings.Contains(calls[0].Function.Arguments, `"city"`) || resp.Choices[0].FinishReason != "tool_calls" {
			t.Errorf("tool calls %+v, finish %q", calls, resp.Choices[0].FinishReason)
		}
		bill(text.ID, resp.Usage.PromptTokens, resp.Usage.CompletionTokens)
	})

	t.Run("streaming", func(t *testing.T) {
		for _, includeUsage := range []bool{true, false} {
			params := openai.ChatCompletionNewParams{Model: text.AccessName, Messages: user("Stream me a few words."), MaxTokens: openai.Int(40)}
			if includeUsage {
				params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
			}
			stream := client.Chat.Completions.NewStreaming(ctx, params)
			var acc openai.ChatCompletionAccumulator
			var chunks, withUsage, finishes int
			ids := map[string]bool{}
			for stream.Next() {
				c := stream.Current()
				acc.AddChunk(c)
				chunks++
				ids[c.ID] = true
				if c.JSON.Usage.Valid() {
					withUsage++
				}
				for _, ch := range c.Choices {
					if ch.FinishReason != "" {
						finishes++
					}
				}
				if c.Model != text.AccessName {
					t.Errorf("chunk model %q", c.Model)
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatalf("include_usage=%v: %v", includeUsage, err)
			}
			if len(ids) != 1 || !strings.HasPrefix(acc.ID, "cmp-") || finishes != 1 || chunks < 3 {
				t.Errorf("include_usage=%v: ids %v, finishes %d, chunks %d", includeUsage, ids, finishes, chunks)
			}
			if !strings.Contains(acc.Choices[0].Message.Content, "simulat") {
				t.Errorf("streamed content %q", acc.Choices[0].Message.Content)
			}
			u := acc.Usage
			switch {
			case includeUsage && (withUsage != 1 || u.TotalTokens != u.PromptTokens+u.CompletionTokens || u.CompletionTokens == 0):
				t.Errorf("include_usage: %d chunks with usage, usage %+v", withUsage, u)
			case !includeUsage && withUsage != 0:
				t.Errorf("usage sent to a client that did not ask: %d chunks", withUsage)
			}
			if includeUsage {
				bill(text.ID, u.PromptTokens, u.CompletionTokens)
			} else {
				// Billed all the same: the router asked the engine for usage.
				want := billed[text.ID]
				before := *want
				eventually(t, 30*time.Second, "unasked stream usage billed", func() error {
					var got usageTotals
					call(t, "GET", p.BaseURL+"/api/v1/usage?service_id="+text.ID, testAdminKey, nil, &got)
					if got.Requests != before.Requests+1 {
						return fmt.Errorf("requests %d, want %d", got.Requests, before.Requests+1)
					}
					*want = got
					return nil
				})
			}
		}
	})

	t.Run("models", func(t *testing.T) {
		page, err := client.Models.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, m := range page.Data {
			got[m.ID] = true
		}
		for _, s := range []service{text, vision, painter} {
			if !got[s.AccessName] {
				t.Errorf("models list lacks %s: %v", s.AccessName, got)
			}
		}
		m, err := client.Models.Get(ctx, vision.AccessName)
		if err != nil || m.ID != vision.AccessName {
			t.Errorf("models get: %+v, %v", m, err)
		}
	})

	t.Run("image understanding", func(t *testing.T) {
		img := image.NewRGBA(image.Rect(0, 0, 37, 21))
		for i := range img.Pix {
			img.Pix[i] = []byte{200, 30, 40, 255}[i%4]
		}
		var buf bytes.Buffer
		if err := png.Encode(&buf, img); err != nil {
			t.Fatal(err)
		}
		url := "data:image/png;base64," + base64.StdEncoding.EncodeToString(buf.Bytes())
		resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: vision.AccessName,
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{
				openai.TextContentPart("What is in this picture?"),
				openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: url, Detail: "low"}),
			})},
		})
		if err != nil {
			t.Fatal(err)
		}
		content := resp.Choices[0].Message.Content
		if !strings.Contains(content, "37x21") || !strings.Contains(strings.ToLower(content), "#c81e28") {
			t.Errorf("answer does not describe the 37x21 #c81e28 image: %q", content)
		}
		bill(vision.ID, resp.Usage.PromptTokens, resp.Usage.CompletionTokens)

		// The same image sent to a text-only service is refused.
		_, err = client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: text.AccessName,
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{
				openai.ImageContentPart(openai.ChatCompletionContentPartImageImageURLParam{URL: url}),
			})},
		})
		wantAPIError(t, err, http.StatusBadRequest, "messages[0].content[0]")
	})

	t.Run("image generation", func(t *testing.T) {
		resp, err := client.Images.Generate(ctx, openai.ImageGenerateParams{
			Model: painter.AccessName, Prompt: "a red square on a blue sea", Size: "256x256",
			ResponseFormat: openai.ImageGenerateParamsResponseFormatB64JSON, N: openai.Int(2),
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Data) != 2 {
			t.Fatalf("images: %d, want 2", len(resp.Data))
		}
		raw, err := base64.StdEncoding.DecodeString(resp.Data[0].B64JSON)
		if err != nil {
			t.Fatal(err)
		}
		checkPNG(t, raw, 256, 256)
		bill(painter.ID, resp.Usage.InputTokens, resp.Usage.OutputTokens)

		resp, err = client.Images.Generate(ctx, openai.ImageGenerateParams{
			Model: painter.AccessName, Prompt: "a lighthouse", Size: "64x64", ResponseFormat: openai.ImageGenerateParamsResponseFormatURL,
		})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(resp.Data[0].URL, p.BaseURL+"/v1/images/files/") {
			t.Fatalf("image url %q", resp.Data[0].URL)
		}
		got, err := http.Get(resp.Data[0].URL)
		if err != nil {
			t.Fatal(err)
		}
		defer got.Body.Close()
		var img bytes.Buffer
		_, _ = img.ReadFrom(got.Body)
		if got.StatusCode != 200 || got.Header.Get("Content-Type") != "image/png" {
			t.Fatalf("GET image: %d %s", got.StatusCode, got.Header.Get("Content-Type"))
		}
		checkPNG(t, img.Bytes(), 64, 64)
		bill(painter.ID, resp.Usage.InputTokens, resp.Usage.OutputTokens)

		_, err = client.Images.Generate(ctx, openai.ImageGenerateParams{Model: text.AccessName, Prompt: "a cat"})
		wantAPIError(t, err, http.StatusBadRequest, "model")
	})

	t.Run("legacy completions", func(t *testing.T) {
		resp, err := client.Completions.New(ctx, openai.CompletionNewParams{
			Model:     openai.CompletionNewParamsModel(text.AccessName),
			Prompt:    openai.CompletionNewParamsPromptUnion{OfArrayOfStrings: []string{"Say this is a test", "And this"}},
			MaxTokens: openai.Int(24), N: openai.Int(2), Seed: openai.Int(5), Temperature: openai.Float(0.5),
			Stop: openai.CompletionNewParamsStopUnion{OfString: openai.String("never-appears")},
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Choices) != 4 || resp.Object != "text_completion" || !strings.HasPrefix(resp.ID, "cmp-") || resp.Model != text.AccessName ||
			!strings.Contains(resp.Choices[0].Text, "simulated") || resp.Usage.CompletionTokens == 0 {
			t.Errorf("completion %s", resp.RawJSON())
		}
		bill(text.ID, resp.Usage.PromptTokens, resp.Usage.CompletionTokens)

		var asked openai.CompletionUsage // the same request's usage, asked for
		for _, includeUsage := range []bool{true, false} {
			params := openai.CompletionNewParams{Model: openai.CompletionNewParamsModel(text.AccessName),
				Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Say this is a test")}, MaxTokens: openai.Int(24), Seed: openai.Int(5)}
			if includeUsage {
				params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
			}
			stream := client.Completions.NewStreaming(ctx, params)
			var got strings.Builder
			var usage *openai.CompletionUsage
			chunks := 0
			for stream.Next() {
				c := stream.Current()
				chunks++
				for _, ch := range c.Choices {
					got.WriteString(ch.Text)
				}
				if c.JSON.Usage.Valid() {
					usage = &c.Usage
				}
				if c.Model != text.AccessName || !strings.HasPrefix(c.ID, "cmp-") {
					t.Errorf("chunk %s", c.RawJSON())
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatalf("include_usage=%v: %v", includeUsage, err)
			}
			if !strings.Contains(got.String(), "simulated") || chunks < 3 || (usage != nil) != includeUsage {
				t.Errorf("include_usage=%v: %d chunks, text %q, usage %+v", includeUsage, chunks, got.String(), usage)
			}
			if usage != nil {
				if usage.CompletionTokens == 0 || usage.TotalTokens != usage.PromptTokens+usage.CompletionTokens {
					t.Errorf("stream usage %+v", *usage)
				}
				asked = *usage
			}
			// Unasked, the usage is metered all the same: the router asked
			// the engine for it. The answers are deterministic, so both
			// streams used what the first was told.
			bill(text.ID, asked.PromptTokens, asked.CompletionTokens)
		}

		_, err = client.Completions.New(ctx, openai.CompletionNewParams{Model: openai.CompletionNewParamsModel(embedder.AccessName),
			Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("hi")}})
		wantAPIError(t, err, http.StatusBadRequest, "model")
		_, err = client.Completions.New(ctx, openai.CompletionNewParams{Model: openai.CompletionNewParamsModel(painter.AccessName),
			Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("hi")}})
		wantAPIError(t, err, http.StatusBadRequest, "model")
	})

	t.Run("embeddings", func(t *testing.T) {
		texts := []string{"The food was delicious.", "The waiter was kind."}
		resp, err := client.Embeddings.New(ctx, openai.EmbeddingNewParams{
			Model: openai.EmbeddingModel(embedder.AccessName), Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: texts},
			EncodingFormat: openai.EmbeddingNewParamsEncodingFormatFloat,
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Data) != 2 || resp.Model != embedder.AccessName || resp.Usage.PromptTokens == 0 || resp.Usage.TotalTokens != resp.Usage.PromptTokens {
			t.Fatalf("embeddings: %d vectors, model %q, usage %+v", len(resp.Data), resp.Model, resp.Usage)
		}
		for i, d := range resp.Data {
			var norm float64
			for _, x := range d.Embedding {
				norm += x * x
			}
			// The catalog's model has 768 dimensions, which the simulator
			// answers with.
			if len(d.Embedding) != 768 || d.Index != int64(i) || math.Abs(norm-1) > 1e-4 {
				t.Errorf("data[%d]: %d dimensions, index %d, norm² %v; want a unit vector of 768", i, len(d.Embedding), d.Index, norm)
			}
		}
		bill(embedder.ID, resp.Usage.PromptTokens, 0)

		short, err := client.Embeddings.New(ctx, openai.EmbeddingNewParams{
			Model: openai.EmbeddingModel(embedder.AccessName), Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String(texts[0])},
			Dimensions: openai.Int(256),
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(short.Data) != 1 || len(short.Data[0].Embedding) != 256 {
			t.Errorf("dimensions 256: got %d vectors of %d", len(short.Data), len(short.Data[0].Embedding))
		}
		bill(embedder.ID, short.Usage.PromptTokens, 0)

		_, err = client.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: openai.EmbeddingModel(text.AccessName),
			Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("hi")}})
		wantAPIError(t, err, http.StatusBadRequest, "model")
		_, err = client.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: openai.EmbeddingModel(embedder.AccessName),
			Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("hi")}, Dimensions: openai.Int(4096)})
		wantAPIError(t, err, http.StatusBadRequest, "dimensions")
		_, err = client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: embedder.AccessName, Messages: user("hi")})
		wantAPIError(t, err, http.StatusBadRequest, "model")
	})

	t.Run("responses", func(t *testing.T) {
		resp, err := client.Responses.New(ctx, responses.ResponseNewParams{
			Model: text.AccessName, Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Say this is a test!")},
			Instructions: openai.String("You are terse."), MaxOutputTokens: openai.Int(200), Temperature: openai.Float(0.7), TopP: openai.Float(0.9),
		})
		if err != nil {
			t.Fatal(err)
		}
		u := resp.Usage
		if !strings.HasPrefix(resp.ID, "resp_") || resp.Status != "completed" || resp.Model != text.AccessName ||
			!strings.Contains(resp.OutputText(), "simulated") || u.OutputTokens == 0 || u.TotalTokens != u.InputTokens+u.OutputTokens {
			t.Errorf("response %s", resp.RawJSON())
		}
		bill(text.ID, u.InputTokens, u.OutputTokens)

		// Cut by max_output_tokens: incomplete, as OpenAI says.
		short, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: text.AccessName,
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Say this is a test!")}, MaxOutputTokens: openai.Int(3)})
		if err != nil {
			t.Fatal(err)
		}
		if short.Status != "incomplete" || short.IncompleteDetails.Reason != "max_output_tokens" || short.Usage.OutputTokens != 3 {
			t.Errorf("max_output_tokens 3: %s", short.RawJSON())
		}
		bill(text.ID, short.Usage.InputTokens, short.Usage.OutputTokens)

		// A function call, and the conversation sent back with its output.
		weather := responses.ToolParamOfFunction("get_weather", map[string]any{"type": "object",
			"properties": map[string]any{"city": map[string]any{"type": "string"}}, "required": []string{"city"}}, false)
		question := responses.ResponseInputItemParamOfMessage("What's the weather in Paris?", responses.EasyInputMessageRoleUser)
		called, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: text.AccessName,
			Input:      responses.ResponseNewParamsInputUnion{OfInputItemList: responses.ResponseInputParam{question}},
			Tools:      []responses.ToolUnionParam{weather},
			ToolChoice: responses.ResponseNewParamsToolChoiceUnion{OfToolChoiceMode: openai.Opt(responses.ToolChoiceOptionsRequired)},
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(called.Output) != 1 || called.Output[0].Type != "function_call" {
			t.Fatalf("function call: %s", called.RawJSON())
		}
		fc := called.Output[0].AsFunctionCall()
		if fc.Name != "get_weather" || !strings.Contains(fc.Arguments, `"city"`) || fc.CallID == "" {
			t.Errorf("function call %+v", fc)
		}
		bill(text.ID, called.Usage.InputTokens, called.Usage.OutputTokens)
		answered, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: text.AccessName,
			Input: responses.ResponseNewParamsInputUnion{OfInputItemList: responses.ResponseInputParam{question,
				responses.ResponseInputItemParamOfFunctionCall(fc.Arguments, fc.CallID, fc.Name),
				functionOutput(fc.CallID, `{"sky":"clear"}`)}},
			Tools: []responses.ToolUnionParam{weather},
		})
		if err != nil {
			t.Fatal(err)
		}
		if answered.Status != "completed" || !strings.Contains(answered.OutputText(), "simulated") || answered.Usage.InputTokens <= called.Usage.InputTokens {
			t.Errorf("answer after the function's output: %s", answered.RawJSON())
		}
		bill(text.ID, answered.Usage.InputTokens, answered.Usage.OutputTokens)

		// An image, to an image-understanding service.
		img := image.NewRGBA(image.Rect(0, 0, 37, 21))
		for i := range img.Pix {
			img.Pix[i] = []byte{200, 30, 40, 255}[i%4]
		}
		var buf bytes.Buffer
		if err := png.Encode(&buf, img); err != nil {
			t.Fatal(err)
		}
		url := "data:image/png;base64," + base64.StdEncoding.EncodeToString(buf.Bytes())
		seen, err := client.Responses.New(ctx, responses.ResponseNewParams{Model: vision.AccessName,
			Input: responses.ResponseNewParamsInputUnion{OfInputItemList: responses.ResponseInputParam{
				responses.ResponseInputItemParamOfMessage(responses.ResponseInputMessageContentListParam{
					responses.ResponseInputContentParamOfInputText("What is in this picture?"),
					{OfInputImage: &responses.ResponseInputImageParam{ImageURL: openai.String(url), Detail: responses.ResponseInputImageDetailLow}},
				}, responses.EasyInputMessageRoleUser)}}})
		if err != nil {
			t.Fatal(err)
		}
		if out := seen.OutputText(); !strings.Contains(out, "37x21") || !strings.Contains(strings.ToLower(out), "#c81e28") {
			t.Errorf("answer does not describe the 37x21 #c81e28 image: %q", out)
		}
		bill(vision.ID, seen.Usage.InputTokens, seen.Usage.OutputTokens)

		// Streamed: the events the client assembles, and the usage on the last.
		stream := client.Responses.NewStreaming(ctx, responses.ResponseNewParams{Model: text.AccessName,
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Stream me a few words.")}, MaxOutputTokens: openai.Int(40)})
		var deltas strings.Builder
		var kinds []string
		var final responses.Response
		for stream.Next() {
			ev := stream.Current()
			kinds = append(kinds, ev.Type)
			switch ev.Type {
			case "response.output_text.delta":
				deltas.WriteString(ev.Delta)
			case "response.completed", "response.incomplete":
				final = ev.Response
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if len(kinds) < 8 || kinds[0] != "response.created" || final.ID == "" || !strings.HasPrefix(final.ID, "resp_") ||
			final.OutputText() != deltas.String() || !strings.Contains(deltas.String(), "simulated") || final.Usage.OutputTokens == 0 {
			t.Errorf("stream: events %v, deltas %q, final %s", kinds, deltas.String(), final.RawJSON())
		}
		bill(text.ID, final.Usage.InputTokens, final.Usage.OutputTokens)

		_, err = client.Responses.New(ctx, responses.ResponseNewParams{Model: text.AccessName,
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}, PreviousResponseID: openai.String(resp.ID)})
		wantAPIError(t, err, http.StatusBadRequest, "previous_response_id")
		_, err = client.Responses.New(ctx, responses.ResponseNewParams{Model: painter.AccessName,
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}})
		wantAPIError(t, err, http.StatusBadRequest, "model")
		_, err = client.Responses.New(ctx, responses.ResponseNewParams{Model: embedder.AccessName,
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")}})
		wantAPIError(t, err, http.StatusBadRequest, "model")
	})

	t.Run("errors", func(t *testing.T) {
		bad := openai.NewClient(option.WithBaseURL(p.BaseURL+"/v1/"), option.WithAPIKey("mp-wrong-key-0000000000000000"), option.WithMaxRetries(0))
		_, err := bad.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: text.AccessName, Messages: user("hi")})
		wantAPIError(t, err, http.StatusUnauthorized, "")
		_, err = client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "u-000000000000/none", Messages: user("hi")})
		wantAPIError(t, err, http.StatusNotFound, "model")
		_, err = client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: text.AccessName, Messages: user("hi"), Temperature: openai.Float(7)})
		wantAPIError(t, err, http.StatusBadRequest, "temperature")
		_, err = client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: text.AccessName, Messages: user(strings.Repeat("x", 33<<20))})
		wantAPIError(t, err, http.StatusRequestEntityTooLarge, "")
		_, err = client.Models.Get(ctx, "u-000000000000/none")
		wantAPIError(t, err, http.StatusNotFound, "model")
	})

	for id, want := range billed {
		eventually(t, 30*time.Second, "usage of "+id, func() error {
			var got usageTotals
			call(t, "GET", p.BaseURL+"/api/v1/usage?service_id="+id, testAdminKey, nil, &got)
			if got != *want {
				return fmt.Errorf("billed %+v, want %+v", got, *want)
			}
			return nil
		})
	}
}

// functionOutput is a function_call_output input item.
func functionOutput(callID, output string) responses.ResponseInputItemUnionParam {
	item := responses.ResponseInputItemParamOfFunctionCallOutput(output)
	item.OfFunctionCallOutput.CallID = openai.String(callID)
	return item
}

// deployRunning creates a one-instance service and waits until it runs.
func deployRunning(t *testing.T, base, name, model, task string) service {
	t.Helper()
	var svc service
	if s := call(t, "POST", base+"/api/v1/services", testAdminKey, map[string]any{"name": name, "base_model": model, "task": task}, &svc); s != 201 {
		t.Fatalf("create %s: status %d", name, s)
	}
	eventually(t, 30*time.Second, name+" running", func() error {
		var got service
		call(t, "GET", base+"/api/v1/services/"+svc.ID, testAdminKey, nil, &got)
		if got.Status != "running" {
			return fmt.Errorf("status %s", got.Status)
		}
		return nil
	})
	return svc
}

func wantAPIError(t *testing.T, err error, status int, param string) {
	t.Helper()
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) {
		t.Errorf("error %v, want an API error with status %d", err, status)
		return
	}
	if apiErr.StatusCode != status || !strings.Contains(apiErr.Param, param) {
		t.Errorf("API error status %d param %q (%s), want status %d param %q", apiErr.StatusCode, apiErr.Param, apiErr.Message, status, param)
	}
}

func checkPNG(t *testing.T, raw []byte, w, h int) {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != w || b.Dy() != h {
		t.Errorf("image %dx%d, want %dx%d", b.Dx(), b.Dy(), w, h)
	}
}
