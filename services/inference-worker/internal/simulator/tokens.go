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

// splitTokens cuts text into the tokens CountTokens counts, in order:
// each pre-token, a long one cut after its leading space and every six
// characters. The pieces concatenate to text, and len(splitTokens(t)) ==
// CountTokens(t); the simulator streams one piece per chunk.
func splitTokens(text string) []string {
	var out []string
	at := 0
	for _, l := range pretoken.FindAllStringIndex(text, -1) {
		if l[0] > at { // not reached for valid UTF-8, kept so no byte is lost
			out = append(out, text[at:l[0]])
		}
		out = append(out, splitPiece(text[l[0]:l[1]])...)
		at = l[1]
	}
	if at < len(text) {
		out = append(out, text[at:])
	}
	return out
}

// splitPiece cuts one pre-token into pieceTokens(p) parts.
func splitPiece(p string) []string {
	if pieceTokens(p) == 1 {
		return []string{p}
	}
	lead := 0
	if strings.HasPrefix(p, " ") {
		lead = 1
	}
	var out []string
	start, runes := 0, 0
	for i := range p[lead:] {
		if runes == 6 {
			out = append(out, p[start:lead+i])
			start, runes = lead+i, 0
		}
		runes++
	}
	return append(out, p[start:])
}
