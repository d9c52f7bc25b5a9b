package simulator

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// Pieces put text back together, count its tokens, and never split a
// character: an emoji or a CJK character that takes several tokens is one
// piece of them all.
func TestSplitTokens(t *testing.T) {
	tests := []struct {
		text  string
		want  []string // the pieces; nil: just check the invariants
		sizes []int    // tokens per piece, when want is set
	}{
		{text: ""},
		{text: "hello world", want: []string{"hello", " world"}, sizes: []int{1, 1}},
		{text: "👍", want: []string{"👍"}, sizes: []int{3}},
		{text: "🦙 llama", want: []string{"🦙", " llama"}, sizes: []int{3, 1}},
		{text: "日本語", want: []string{"日", "本", "語"}, sizes: []int{1, 1, 2}},
		{text: "😀😃😄", want: []string{"😀", "😃", "😄"}, sizes: []int{2, 2, 2}},
		{text: "the quick brown fox"}, {text: "Hello, world!"}, {text: "wait... what?!"},
		{text: "an internationalization"}, {text: "1234567"}, {text: "don't"}, {text: "héllo wörld"},
		{text: "你好，世界"}, {text: "a\nb"}, {text: "        x"}, {text: " supercalifragilisticexpialidocious"},
		{text: `{"simulated":true}`}, {text: "mixed 中文 and emoji 🎉🎉 text"},
	}
	for _, tc := range tests {
		t.Run(tc.text, func(t *testing.T) {
			pieces := splitTokens(tc.text)
			var b strings.Builder
			tokens := 0
			for _, p := range pieces {
				b.WriteString(p.text)
				tokens += len(p.tokens)
				if !utf8.ValidString(p.text) || p.text == "" {
					t.Errorf("piece %q is empty or not valid UTF-8", p.text)
				}
				if got, want := string(bytes.Join(p.tokens, nil)), p.text; got != want {
					t.Errorf("piece tokens spell %q, want %q", got, want)
				}
			}
			if got, want := b.String(), tc.text; got != want {
				t.Errorf("pieces join to %q, want %q", got, want)
			}
			if got, want := tokens, CountTokens(tc.text); got != want {
				t.Errorf("pieces hold %d tokens, want CountTokens = %d", got, want)
			}
			if tc.want == nil {
				return
			}
			var texts []string
			var sizes []int
			for _, p := range pieces {
				texts = append(texts, p.text)
				sizes = append(sizes, len(p.tokens))
			}
			if !slices.Equal(texts, tc.want) || !slices.Equal(sizes, tc.sizes) {
				t.Errorf("pieces %q of %v tokens, want %q of %v", texts, sizes, tc.want, tc.sizes)
			}
		})
	}
}

func TestTruncateTokens(t *testing.T) {
	tests := []struct {
		text string
		n    int
		want string
	}{
		{"hello world", 0, ""},
		{"hello world", 1, "hello"},
		{"hello world", 2, "hello world"},
		{"hello world", 9, "hello world"},
		{"[simulated", 1, "[s"},
		{"ok 👍", 1, "ok"},
		{"ok 👍", 2, "ok"}, // the emoji's three tokens do not fit
		{"ok 👍", 4, "ok 👍"},
	}
	for _, tc := range tests {
		if got := truncateTokens(tc.text, tc.n); got != tc.want {
			t.Errorf("truncateTokens(%q, %d) = %q, want %q", tc.text, tc.n, got, tc.want)
		}
	}
}

func TestTokenString(t *testing.T) {
	for _, tc := range []struct {
		tok  []byte
		want string
	}{
		{[]byte(" world"), " world"},
		{[]byte("👍")[:2], `\xf0\x9f`},
		{append([]byte(" "), []byte("語")[:1]...), ` \xe8`},
	} {
		if got := tokenString(tc.tok); got != tc.want {
			t.Errorf("tokenString(% x) = %q, want %q", tc.tok, got, tc.want)
		}
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
