package simulator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
)

var vocabulary = strings.Fields(`the a model service token answer request stream batch
	instance router worker engine latency prompt reply simulated deterministic
	text image billing usage event cluster node queue fast steady ready scale
	and of to in for with on is it this that which`)

// notice opens every text answer; %s is the base model.
const notice = "[simulated by the Modelport simulator engine for %s; not real model output]"

// choice is one answer to a chat request, either text or a tool call.
type choice struct {
	content  string    // the text answer, "" with a tool call
	toolCall *toolCall // nil for a text answer
	finish   string
	tokens   int       // completion tokens
	pieces   []piece   // content's tokens, as they are streamed
	logprobs []logprob // one per token when logprobs are asked for
}

// answer builds choice i of a request for base whose prompt hashed to
// seed.
func answer(p *chatParams, base string, seed uint64, i, promptTokens int, images []imageInfo) choice {
	seed = choiceSeed(seed, i)
	if p.toolChoice == toolsRequired || p.toolChoice == toolsNamed {
		call := callTool(p, seed)
		finish := "tool_calls"
		if p.limit >= 0 && CountTokens(call.Function.Name+call.Function.Arguments) > p.limit {
			// Cut short as an engine would be: arguments that are not
			// complete JSON, finish "length".
			call.Function.Arguments, finish = truncateArguments(call.Function.Name, call.Function.Arguments, p.limit), "length"
		}
		return choice{toolCall: &call, finish: finish, tokens: CountTokens(call.Function.Name + call.Function.Arguments)}
	}
	var c choice
	if p.jsonMode {
		words, _ := replyText(base, seed, promptTokens, images, -1, p.stops)
		c.content, c.finish = jsonAnswer(words, p.limit)
	} else {
		c.content, c.finish = replyText(base, seed, promptTokens, images, p.limit, p.stops)
	}
	c.pieces = splitTokens(c.content)
	var tokens [][]byte
	for _, pc := range c.pieces {
		tokens = append(tokens, pc.tokens...)
	}
	c.tokens = len(tokens)
	if p.logprobs {
		c.logprobs = logprobsFor(seed, tokens, p.topLogprobs)
	}
	return c
}

// truncateArguments keeps the longest prefix of args, in tokens, with
// CountTokens(name+prefix) <= limit.
func truncateArguments(name, args string, limit int) string {
	kept := ""
	for _, pc := range splitTokens(args) {
		if CountTokens(name+kept+pc.text) > limit {
			break
		}
		kept += pc.text
	}
	return kept
}

// choiceSeed mixes a choice's index into the request's seed; choice 0
// keeps it, so n=1 answers what a request without n does.
func choiceSeed(seed uint64, i int) uint64 {
	return seed ^ uint64(i)*0x9e3779b97f4a7c15
}

// replyText writes a deterministic reply for seed: the notice naming
// base, a line per image, the prompt's token count, then vocabulary words
// until a length drawn from seed or the caller's limit is reached. Without
// a limit the length covers at least everything before the words, so the
// notice is never cut short by chance. Stop strings are looked for after
// the notice and the image lines, and cut the text before the first one
// found. It returns the text and the finish reason.
func replyText(base string, seed uint64, promptTokens int, images []imageInfo, limit int, stops []string) (string, string) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	target := 16 + rng.IntN(48)
	var b strings.Builder
	fmt.Fprintf(&b, notice, base)
	for k, im := range images {
		fmt.Fprintf(&b, " image %d: %s.", k+1, im.describe())
	}
	protected := b.Len()
	fmt.Fprintf(&b, " Your prompt had %d tokens.", promptTokens)
	target = max(target, CountTokens(b.String()))
	finish := "stop"
	if limit >= 0 && limit < target {
		target, finish = limit, "length"
	}
	// The text so far ends in a full stop and each word is letters after a
	// space, which cl100k_base pre-tokenizes on its own: counts add up word
	// by word, without encoding the whole text again.
	for n := CountTokens(b.String()); n < target; {
		word := " " + vocabulary[rng.IntN(len(vocabulary))]
		b.WriteString(word)
		n += CountTokens(word)
	}
	text := b.String()
	// Trim to the token budget: the notice alone may exceed a tiny limit.
	for n := CountTokens(text); n > target; n = CountTokens(text) {
		cut := strings.LastIndexAny(text[:len(text)-1], " ")
		if cut <= 0 {
			text = truncateTokens(text, target)
			break
		}
		text = text[:cut]
	}
	if len(text) > protected {
		if at := firstStop(text[protected:], stops); at >= 0 {
			text, finish = text[:protected+at], "stop"
		}
	}
	return text, finish
}

// firstStop returns where the earliest stop string begins in text, or -1.
func firstStop(text string, stops []string) int {
	at := -1
	for _, s := range stops {
		if i := strings.Index(text, s); i >= 0 && (at < 0 || i < at) {
			at = i
		}
	}
	return at
}

// jsonAnswer wraps text in the JSON object that json_object and
// json_schema answers are, dropping words from the end of text until the
// object fits limit tokens (finish "length"); without room for any text it
// drops "text", then "engine". When even {"simulated":true} does not fit,
// it returns that object cut to the limit, which is not valid JSON.
func jsonAnswer(text string, limit int) (string, string) {
	finish := "stop"
	for {
		out := jsonBody{Simulated: true, Engine: fingerprint, Text: &text}.String()
		if limit < 0 || CountTokens(out) <= limit {
			return out, finish
		}
		finish = "length"
		if text == "" {
			break
		}
		text = text[:max(strings.LastIndexByte(text, ' '), 0)]
	}
	for _, body := range []jsonBody{{Simulated: true, Engine: fingerprint}, {Simulated: true}} {
		if out := body.String(); CountTokens(out) <= limit {
			return out, finish
		}
	}
	return truncateTokens(jsonBody{Simulated: true}.String(), limit), finish
}

// jsonBody is the content of a JSON-mode answer.
type jsonBody struct {
	Simulated bool    `json:"simulated"`
	Engine    string  `json:"engine,omitempty"`
	Text      *string `json:"text,omitempty"`
}

// String is b as compact JSON, without HTML escaping.
func (b jsonBody) String() string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(b)
	return strings.TrimSuffix(buf.String(), "\n")
}
