package simulator_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

// Answers report the prompt tokens found in the prefix cache as engines
// do, in usage.prompt_tokens_details.cached_tokens: none on a
// conversation's first turn, its earlier turns on the next, streamed or
// not.
func TestUsageReportsCachedTokens(t *testing.T) {
	base := startWith(t, simulator.Config{ServedName: servedName, PrefixCacheTokens: 1 << 16})
	system := strings.Repeat("You are the support assistant of a travel agency; be brief and exact. ", 30)
	turn1 := messages("system", system, "user", "Which trains go to Lyon tomorrow?")
	status, body := post(t, base+"/chat/completions", map[string]any{"model": servedName, "messages": turn1})
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	var first fullCompletion
	if err := json.Unmarshal(body, &first); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), `"prompt_tokens_details":{"cached_tokens":0}`) {
		t.Fatalf("first turn: usage %s, want prompt_tokens_details.cached_tokens 0", body)
	}

	turn2 := append(turn1, messages("assistant", *first.Choices[0].Message.Content, "user", "And the day after?")...)
	chunks := streamChat(t, base, map[string]any{"model": servedName, "messages": turn2,
		"stream_options": map[string]any{"include_usage": true, "continuous_usage_stats": true}})
	last := chunks[len(chunks)-1].Usage
	if last == nil {
		t.Fatalf("the last chunk has no usage with prompt_tokens_details: %+v", chunks[len(chunks)-1])
	}
	cached := last.PromptTokensDetails.CachedTokens
	if cached <= first.Usage.PromptTokens-16 || cached >= last.PromptTokens || cached%16 != 0 {
		t.Errorf("second turn: %d of %d prompt tokens cached, want whole blocks covering the first turn's %d prompt tokens and its answer",
			cached, last.PromptTokens, first.Usage.PromptTokens)
	}
	for i, c := range chunks[:len(chunks)-1] {
		if c.Usage == nil || c.Usage.PromptTokensDetails.CachedTokens != cached {
			t.Errorf("chunk %d: running usage %+v, want cached_tokens %d", i, c.Usage, cached)
		}
	}
}
