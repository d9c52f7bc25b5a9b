package simulator_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

type textCompletion struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Text         string  `json:"text"`
		Index        int     `json:"index"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
}

func TestCompletions(t *testing.T) {
	base := start(t)
	prompt := "Say this is a test"
	status, body := post(t, base+"/completions", map[string]any{"model": servedName, "prompt": prompt, "max_tokens": 30, "seed": 3})
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	var c textCompletion
	if err := json.Unmarshal(body, &c); err != nil {
		t.Fatal(err)
	}
	if c.Object != "text_completion" || c.Model != servedName || len(c.Choices) != 1 || c.Usage == nil {
		t.Fatalf("answer %s", body)
	}
	text := c.Choices[0].Text
	if !strings.Contains(text, "simulated") || c.Choices[0].FinishReason == nil {
		t.Errorf("text %q, finish %v", text, c.Choices[0].FinishReason)
	}
	if c.Usage.PromptTokens != simulator.CountTokens(prompt) || c.Usage.CompletionTokens != simulator.CountTokens(text) ||
		c.Usage.CompletionTokens > 30 || c.Usage.TotalTokens != c.Usage.PromptTokens+c.Usage.CompletionTokens {
		t.Errorf("usage %+v for %q", *c.Usage, text)
	}

	t.Run("a batch of prompts, n each", func(t *testing.T) {
		status, body := post(t, base+"/completions", map[string]any{"model": servedName, "prompt": []string{"one", "two"}, "n": 2, "max_tokens": 20})
		var b textCompletion
		if err := json.Unmarshal(body, &b); status != 200 || err != nil || len(b.Choices) != 4 {
			t.Fatalf("status %d: %s", status, body)
		}
		for i, ch := range b.Choices {
			if ch.Index != i {
				t.Errorf("choice %d has index %d", i, ch.Index)
			}
		}
		if b.Usage.PromptTokens != simulator.CountTokens("one")+simulator.CountTokens("two") {
			t.Errorf("usage %+v", *b.Usage)
		}
	})

	t.Run("streamed, the same text and usage", func(t *testing.T) {
		resp, err := http.Post(base+"/completions", "application/json", strings.NewReader(
			`{"model":"`+servedName+`","prompt":"Say this is a test","max_tokens":30,"seed":3,"stream":true,"stream_options":{"include_usage":true}}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got strings.Builder
		var u *struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
			TotalTokens      int `json:"total_tokens"`
		}
		finishes, done := 0, false
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			data, ok := bytes.CutPrefix(sc.Bytes(), []byte("data: "))
			if !ok {
				continue
			}
			if string(data) == "[DONE]" {
				done = true
				break
			}
			var ch textCompletion
			if err := json.Unmarshal(data, &ch); err != nil || ch.Object != "text_completion" {
				t.Fatalf("chunk %s", data)
			}
			for _, c := range ch.Choices {
				got.WriteString(c.Text)
				if c.FinishReason != nil {
					finishes++
				}
			}
			if ch.Usage != nil {
				u = ch.Usage
			}
		}
		if !done || got.String() != text || finishes != 1 || u == nil || u.PromptTokens != c.Usage.PromptTokens || u.CompletionTokens != c.Usage.CompletionTokens {
			t.Errorf("streamed %q (done %v, finishes %d, usage %+v); want %q and usage %+v", got.String(), done, finishes, u, text, *c.Usage)
		}
	})

	for _, tc := range []struct {
		name  string
		req   map[string]any
		param string
	}{
		{"no prompt", map[string]any{"model": servedName}, "prompt"},
		{"max_tokens 0", map[string]any{"model": servedName, "prompt": "x", "max_tokens": 0}, "max_tokens"},
		{"temperature 3", map[string]any{"model": servedName, "prompt": "x", "temperature": 3}, "temperature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := post(t, base+"/completions", tc.req)
			var e errorBody
			_ = json.Unmarshal(body, &e)
			if status != 400 || e.Error.Param == nil || *e.Error.Param != tc.param {
				t.Errorf("status %d, %s; want 400 naming %s", status, body, tc.param)
			}
		})
	}
}
