package simulator

import (
	"regexp"
	"strings"
	"unicode/utf8"
)

// pretoken splits text the way GPT-style BPE tokenizers do before merging:
// contractions, words with their leading space, runs of up to three digits,
// punctuation runs, and whitespace.
var pretoken = regexp.MustCompile(`'(?:s|t|re|ve|m|ll|d)| ?\p{L}+| ?\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+`)

// CountTokens estimates how many BPE tokens text has: one per pre-token,
// plus one for every further six characters of a long word (its leading
// space aside), which a BPE vocabulary would split. It is deterministic, so prompt and completion
// counts agree between the engine, the router and billing.
func CountTokens(text string) int {
	n := 0
	for _, p := range pretoken.FindAllString(text, -1) {
		n += pieceTokens(p)
	}
	return n
}

// pieceTokens is the token count of one pre-token.
func pieceTokens(p string) int {
	return 1 + max(utf8.RuneCountInString(strings.TrimPrefix(p, " "))-1, 0)/6
}
