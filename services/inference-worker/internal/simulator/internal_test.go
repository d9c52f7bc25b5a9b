package simulator

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestSplitTokens(t *testing.T) {
	for _, text := range []string{
		"", "hello", "the quick brown fox", "Hello, world!", "wait... what?!", "abcdefg",
		"an internationalization", "1234567", "3.14", "don't", "héllo wörld", "日本語", "👍",
		"a\nb", "  ", "        x", " supercalifragilisticexpialidocious", `{"simulated":true}`,
	} {
		t.Run(text, func(t *testing.T) {
			pieces := splitTokens(text)
			if got, want := strings.Join(pieces, ""), text; got != want {
				t.Errorf("pieces join to %q, want %q", got, want)
			}
			if got, want := len(pieces), CountTokens(text); got != want {
				t.Errorf("%d pieces %q, want CountTokens = %d", got, pieces, want)
			}
			for _, p := range pieces {
				if got, want := CountTokens(p), 1; got != want && strings.TrimSpace(p) != "" {
					t.Errorf("piece %q counts %d tokens, want %d", p, got, want)
				}
			}
		})
	}
}

// The cases OpenAI documents, and the edges of the two scaling steps.
func TestImageTokens(t *testing.T) {
	tests := []struct {
		w, h   int
		detail string
		want   int
	}{
		{1024, 1024, "low", 85},
		{4096, 8192, "low", 85},
		{1024, 1024, "high", 765},  // → 768x768, 4 tiles
		{2048, 4096, "high", 1105}, // → 1024x2048 → 768x1536, 6 tiles
		{4096, 8192, "auto", 1105}, // → 1024x2048 → 768x1536
		{100, 100, "high", 255},    // not scaled up: 1 tile
		{512, 512, "high", 255},    // exactly one tile
		{513, 512, "high", 425},    // 2 tiles
		{768, 1600, "high", 85 + 170*2*4},
		{1, 40000, "high", 85 + 170*1*4}, // → 1x2048 (sides stay at least 1 pixel)
	}
	for _, tc := range tests {
		if got := imageTokens(tc.w, tc.h, tc.detail); got != tc.want {
			t.Errorf("imageTokens(%d, %d, %s) = %d, want %d", tc.w, tc.h, tc.detail, got, tc.want)
		}
	}
}

func TestJSONAnswerFits(t *testing.T) {
	text := "[simulated by the Modelport simulator engine for m; not real model output] Your prompt had 9 tokens. a b c"
	for limit := 1; limit <= 60; limit++ {
		out, finish := jsonAnswer(text, limit)
		if got := CountTokens(out); got > limit {
			t.Errorf("limit %d: %d tokens: %s", limit, got, out)
		}
		if valid := json.Valid([]byte(out)); valid != (limit >= CountTokens(`{"simulated":true}`)) {
			t.Errorf("limit %d: valid JSON = %v: %s", limit, valid, out)
		}
		if finish != "length" && CountTokens(out) < CountTokens(text) {
			t.Errorf("limit %d: finish %q for a trimmed answer %s", limit, finish, out)
		}
	}
	out, finish := jsonAnswer(text, -1)
	var got jsonBody
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Text == nil || *got.Text != text || finish != "stop" {
		t.Errorf("no limit: %s %s, want the whole text", out, finish)
	}
}
