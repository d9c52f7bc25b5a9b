package gateway

import (
	"sync"

	"github.com/pkoukk/tiktoken-go"
	loader "github.com/pkoukk/tiktoken-go-loader"
)

// cl100k is the cl100k_base encoding (GPT-4's), built once from the ranks
// compiled into the binary: the router never downloads anything. It is
// loaded the first time a prompt is counted, which happens only when an
// engine did not report a request's usage.
var cl100k = sync.OnceValues(func() (*tiktoken.Tiktoken, error) {
	ranks, err := loader.NewOfflineLoader().LoadTiktokenBpe("cl100k_base.tiktoken")
	if err != nil {
		return nil, err
	}
	special := map[string]int{
		tiktoken.ENDOFTEXT: 100257, tiktoken.FIM_PREFIX: 100258, tiktoken.FIM_MIDDLE: 100259,
		tiktoken.FIM_SUFFIX: 100260, tiktoken.ENDOFPROMPT: 100276,
	}
	const pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	bpe, err := tiktoken.NewCoreBPE(ranks, special, pattern)
	if err != nil {
		return nil, err
	}
	set := map[string]any{}
	for k := range special {
		set[k] = true
	}
	return tiktoken.NewTiktoken(bpe, &tiktoken.Encoding{Name: tiktoken.MODEL_CL100K_BASE, PatStr: pattern, MergeableRanks: ranks, SpecialTokens: special}, set), nil
})

// countTokens is how many cl100k_base tokens text has, special-token text
// counted as ordinary text; an estimate of four bytes a token if the
// encoding cannot be loaded, which only a broken build sees.
func countTokens(text string) int {
	if text == "" {
		return 0
	}
	enc, err := cl100k()
	if err != nil {
		return (len(text) + 3) / 4
	}
	return len(enc.EncodeOrdinary(text))
}

// prompt is the text of a chat request's messages, kept to count its
// tokens when the engine does not say how many it read: a stream cut
// before its first usage report, a client gone before the answer.
type prompt struct {
	messages []promptMessage
}

type promptMessage struct {
	role, text string
}

// tokens counts the prompt as chat templates lay it out: the text of each
// message and its role, four tokens of markers per message and three to
// prime the reply. Images are not counted. Engines count with their own
// tokenizer, so for a real model this is an estimate; it is exact for the
// simulator, which counts the same way.
func (p *prompt) tokens() int {
	if p == nil {
		return 0
	}
	n := 3
	for _, m := range p.messages {
		n += 4 + countTokens(m.role) + countTokens(m.text)
	}
	return n
}
