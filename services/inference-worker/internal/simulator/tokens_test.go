package simulator_test

import (
	"strings"
	"testing"

	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

// The rule: one token per pre-token (a word with its leading space, up to
// three digits, a run of punctuation, a run of whitespace), plus one for
// every further six characters of a long pre-token.
func TestCountTokens(t *testing.T) {
	tests := []struct {
		name string
		text string
		want int
	}{
		{name: "empty", text: "", want: 0},
		{name: "one word", text: "hello", want: 1},
		{name: "words with their spaces", text: "the quick brown fox", want: 4},
		{name: "punctuation is its own token", text: "Hello, world!", want: 4},
		{name: "a punctuation run is one token", text: "...", want: 1},
		{name: "punctuation runs between words", text: "wait... what?!", want: 4},
		{name: "six letters fit one token", text: "abcdef", want: 1},
		{name: "seven letters take two", text: "abcdefg", want: 2},
		{name: "long word", text: "internationalization", want: 4},                  // 20 letters: 1 + 19/6
		{name: "long word after a space", text: "an internationalization", want: 5}, // 1 + (1 + 20/6)
		{name: "digits in threes", text: "2024", want: 2},
		{name: "seven digits", text: "1234567", want: 3},
		{name: "decimal number", text: "3.14", want: 3},
		{name: "contraction", text: "don't", want: 2},
		{name: "accented letters are letters", text: "héllo wörld", want: 2},
		{name: "CJK word", text: "日本語", want: 1},
		{name: "emoji", text: "👍", want: 1},
		{name: "newline between words", text: "a\nb", want: 3},
		{name: "whitespace run", text: "  ", want: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := simulator.CountTokens(tc.text); got != tc.want {
				t.Errorf("CountTokens(%q) = %d, want %d", tc.text, got, tc.want)
			}
		})
	}
}

func TestCountTokensGrowsWithText(t *testing.T) {
	word := "token "
	prev := 0
	for n := 1; n <= 50; n++ {
		text := strings.Repeat(word, n)
		got := simulator.CountTokens(text)
		if got <= prev {
			t.Fatalf("CountTokens of %d words = %d, not more than %d for %d words", n, got, prev, n-1)
		}
		if got != simulator.CountTokens(text) {
			t.Fatalf("CountTokens(%q) is not deterministic", text)
		}
		prev = got
	}
}
