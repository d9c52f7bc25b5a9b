package simulator

import (
	"regexp"
	"unicode/utf8"
)

// pretoken splits text the way GPT-style BPE tokenizers do before merging:
// contractions, words with their leading space, runs of up to three digits,
// punctuation runs, and whitespace.
var pretoken = regexp.MustCompile(`'(?:s|t|re|ve|m|ll|d)| ?\p{L}+| ?\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+`)

// CountTokens estimates how many BPE tokens text has: one per pre-token,
// plus one for every further six characters of a long word, which a BPE
// vocabulary would split. It is deterministic, so prompt and completion
// counts agree between the engine, the router and billing.
func CountTokens(text string) int {
	n := 0
	for _, p := range pretoken.FindAllString(text, -1) {
		n += 1 + (utf8.RuneCountInString(p)-1)/6
	}
	return n
}
