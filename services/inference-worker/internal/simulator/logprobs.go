package simulator

import (
	"math"
	"math/rand/v2"
	"strings"
)

// choiceLogprobs is a choice's logprobs object.
type choiceLogprobs struct {
	Content []logprob `json:"content"`
}

// logprob is one token's entry in logprobs.content.
type logprob struct {
	Token       string       `json:"token"`
	Logprob     float64      `json:"logprob"`
	Bytes       []int        `json:"bytes"`
	TopLogprobs []topLogprob `json:"top_logprobs"`
}

type topLogprob struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

// logprobsFor returns deterministic logprobs for tokens, the tokens of
// one choice's content as bytes. Each token is given a probability in
// [0.5, 0.99), so it is the most likely one at its position; the
// alternatives listed in top_logprobs (after the token itself) are
// vocabulary words sharing the rest of the probability, each half as
// likely as the one before, so the probabilities at a position never sum
// past 1. A token holding part of a character is named with \xNN escapes
// (see tokenString); its bytes are exact.
func logprobsFor(seed uint64, tokens [][]byte, top int) []logprob {
	rng := rand.New(rand.NewPCG(seed, 0x109b))
	out := make([]logprob, len(tokens))
	for i, raw := range tokens {
		tok := tokenString(raw)
		p := 0.5 + 0.49*rng.Float64()
		lp := math.Log(p)
		e := logprob{Token: tok, Logprob: lp, Bytes: byteValues(string(raw)), TopLogprobs: []topLogprob{}}
		if top > 0 {
			e.TopLogprobs = append(e.TopLogprobs, topLogprob{Token: tok, Logprob: lp, Bytes: e.Bytes})
			lead := ""
			if strings.HasPrefix(tok, " ") {
				lead = " "
			}
			rest := math.Log(1 - p)
			start := rng.IntN(len(vocabulary))
			for k := 0; len(e.TopLogprobs) < top && k < len(vocabulary); k++ {
				alt := lead + vocabulary[(start+k)%len(vocabulary)]
				if alt == tok {
					continue
				}
				j := len(e.TopLogprobs)
				e.TopLogprobs = append(e.TopLogprobs, topLogprob{Token: alt, Logprob: rest - float64(j)*math.Ln2, Bytes: byteValues(alt)})
			}
		}
		out[i] = e
	}
	return out
}

// byteValues is s's UTF-8 encoding as the JSON array OpenAI sends.
func byteValues(s string) []int {
	out := make([]int, len(s))
	for i := range len(s) {
		out[i] = int(s[i])
	}
	return out
}
