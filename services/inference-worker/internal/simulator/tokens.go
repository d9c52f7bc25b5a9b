package simulator

import (
	"container/list"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/pkoukk/tiktoken-go"
	tiktoken_loader "github.com/pkoukk/tiktoken-go-loader"
)

// encoding is cl100k_base, loaded once from the ranks compiled into the
// binary: the simulator never downloads anything, so it counts tokens the
// same way on a machine without a network.
var encoding = sync.OnceValue(func() *tiktoken.Tiktoken {
	// The loader must be set before the first GetEncoding: the default one
	// fetches the ranks over HTTP.
	tiktoken.SetBpeLoader(tiktoken_loader.NewOfflineLoader())
	enc, err := tiktoken.GetEncoding(tiktoken.MODEL_CL100K_BASE)
	if err != nil {
		// The ranks are embedded; only a broken build gets here.
		panic(fmt.Sprintf("simulator: loading cl100k_base: %v", err))
	}
	return enc
})

// CountTokens is how many cl100k_base BPE tokens text has, the encoding of
// GPT-4 and GPT-3.5: exact, and deterministic, so prompt and completion
// counts agree between the engine, the router and billing. Special-token
// text such as "<|endoftext|>" is counted as ordinary text. The first call
// loads the encoding (a fraction of a second); it is safe for concurrent
// use.
func CountTokens(text string) int {
	if text == "" {
		return 0
	}
	return len(encoding().EncodeOrdinary(text))
}

// Tokens of the simulated chat template, outside cl100k_base's ids. A
// message is <start> role <sep> text <end> <newline>: four tokens more
// than its role and text. A reply is primed with <start> assistant <sep>,
// three tokens, so a prompt followed by its answer and <end> <newline>
// is, token for token, the start of the next turn's prompt.
const (
	tokStart uint32 = 200_000 + iota
	tokSep
	tokEnd
	tokNewline
)

// tokenIDs returns text's cl100k_base token ids. Long texts are
// remembered process-wide (see tokenMemo), so the history a conversation
// sends again on every turn is encoded once.
func tokenIDs(text string) []uint32 {
	if text == "" {
		return nil
	}
	if len(text) < memoMinBytes {
		return encodeIDs(text)
	}
	if ids, ok := tokenMemo.get(text); ok {
		return ids
	}
	ids := encodeIDs(text)
	tokenMemo.put(text, ids)
	return ids
}

func encodeIDs(text string) []uint32 {
	ids := encoding().EncodeOrdinary(text)
	out := make([]uint32, len(ids))
	for i, id := range ids {
		out[i] = uint32(id)
	}
	return out
}

// memoMinBytes is the shortest text tokenIDs remembers: shorter ones
// encode in microseconds.
const memoMinBytes = 128

// tokenMemo holds the token ids of up to a million tokens of text, least
// recently used dropped first. Encoding is a pure function of the text,
// so sharing the memo between instances changes nothing they answer.
var tokenMemo = &memo{maxTokens: 1 << 20, byText: map[string]*list.Element{}}

type memo struct {
	maxTokens int

	mu     sync.Mutex
	tokens int
	lru    list.List // of *memoEntry, most recent first
	byText map[string]*list.Element
}

type memoEntry struct {
	text string
	ids  []uint32
}

func (m *memo) get(text string) ([]uint32, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.byText[text]
	if !ok {
		return nil, false
	}
	m.lru.MoveToFront(e)
	return e.Value.(*memoEntry).ids, true
}

func (m *memo) put(text string, ids []uint32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.byText[text]; ok || len(ids) > m.maxTokens {
		return
	}
	m.byText[text] = m.lru.PushFront(&memoEntry{text: text, ids: ids})
	m.tokens += len(ids)
	for m.tokens > m.maxTokens {
		e := m.lru.Back()
		old := m.lru.Remove(e).(*memoEntry)
		delete(m.byText, old.text)
		m.tokens -= len(old.ids)
	}
}

// tokenize returns text's tokens, each as its bytes. A token may hold part
// of a UTF-8 character: CJK and emoji often take several tokens each.
func tokenize(text string) [][]byte {
	if text == "" {
		return nil
	}
	enc := encoding()
	ids := enc.EncodeOrdinary(text)
	out := make([][]byte, len(ids))
	for i, id := range ids {
		out[i] = []byte(enc.Decode([]int{id}))
	}
	return out
}

// piece is what one streamed chunk carries: one token, or the run of
// consecutive tokens it takes to end on a whole UTF-8 character.
type piece struct {
	text   string
	tokens [][]byte // the tokens, as bytes; at least one
}

// splitTokens cuts text into pieces in order. The pieces concatenate to
// text, each is valid UTF-8 when text is, and their tokens add up to
// CountTokens(text).
func splitTokens(text string) []piece {
	var out []piece
	var run [][]byte
	var buf []byte
	for _, tok := range tokenize(text) {
		run = append(run, tok)
		buf = append(buf, tok...)
		if utf8.Valid(buf) {
			out = append(out, piece{text: string(buf), tokens: run})
			run, buf = nil, nil
		}
	}
	if len(run) > 0 { // only for text that is not valid UTF-8; no byte is lost
		out = append(out, piece{text: string(buf), tokens: run})
	}
	return out
}

// truncateTokens keeps the longest run of whole pieces from the start of
// text that is at most n tokens long, so a cut never splits a character.
func truncateTokens(text string, n int) string {
	pieces := splitTokens(text)
	count, end := 0, 0
	for _, p := range pieces {
		if count+len(p.tokens) > n {
			break
		}
		count += len(p.tokens)
		end += len(p.text)
	}
	// A prefix of a token sequence almost always encodes to those same
	// tokens; step back further in the rare case it does not.
	for end > 0 && CountTokens(text[:end]) > n {
		_, size := utf8.DecodeLastRuneInString(text[:end])
		end -= size
	}
	return text[:end]
}

// tokenString is how logprobs name a token: its text, with each byte that
// is part of a character split across tokens written as \xNN, as OpenAI
// does.
func tokenString(tok []byte) string {
	if utf8.Valid(tok) {
		return string(tok)
	}
	var b strings.Builder
	for len(tok) > 0 {
		r, size := utf8.DecodeRune(tok)
		if r == utf8.RuneError && size <= 1 {
			fmt.Fprintf(&b, `\x%02x`, tok[0])
			size = 1
		} else {
			b.WriteRune(r)
		}
		tok = tok[size:]
	}
	return b.String()
}
