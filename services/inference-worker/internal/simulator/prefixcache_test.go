package simulator

import (
	"container/list"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// seq returns n made-up token ids starting at from.
func seq(from, n int) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = uint32(from + i)
	}
	return out
}

func TestBlockHashesChainThePrefix(t *testing.T) {
	a := blockHashes(seq(0, 40)) // two whole blocks; the last 8 tokens are not cached
	if got, want := len(a), 2; got != want {
		t.Fatalf("got %d blocks, want %d", got, want)
	}
	b := blockHashes(append(seq(0, 16), seq(1000, 16)...))
	if a[0] != b[0] {
		t.Errorf("the same first block hashes differently")
	}
	if a[1] == b[1] {
		t.Errorf("different second blocks hash the same")
	}
	// A block's hash names its whole prefix: the same tokens after a
	// different first block are a different block.
	c := blockHashes(append(seq(500, 16), seq(16, 16)...))
	if a[1] == c[1] {
		t.Errorf("the same block after a different prefix hashes the same")
	}
}

func TestPrefixCacheLookup(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newPrefixCache(1 << 10)
	prompt := blockHashes(seq(0, 64)) // 4 blocks
	if got := c.lookup(prompt, now); got != 0 {
		t.Fatalf("an empty cache matched %d blocks", got)
	}
	c.insert(prompt[:3], now)
	if got, want := c.lookup(prompt, now), 3; got != want {
		t.Errorf("matched %d blocks, want %d", got, want)
	}
	// Only leading blocks count: with its first evicted, a prompt
	// matches nothing.
	tail := newPrefixCache(1 << 10)
	tail.insert(prompt[1:], now)
	if got := tail.lookup(prompt, now); got != 0 {
		t.Errorf("a prompt whose first block is not cached matched %d blocks", got)
	}

	// A block still being computed is not there yet for a request that
	// arrives before its prefill ends.
	later := newPrefixCache(1 << 10)
	later.insert(prompt, now.Add(time.Second))
	if got := later.lookup(prompt, now); got != 0 {
		t.Errorf("blocks ready in a second matched %d now", got)
	}
	if got, want := later.lookup(prompt, now.Add(time.Second)), 4; got != want {
		t.Errorf("once ready, matched %d blocks, want %d", got, want)
	}
	// Computing it again sooner (another instance of the prompt) keeps
	// the earlier time.
	later.insert(prompt, now.Add(time.Hour))
	if got, want := later.lookup(prompt, now.Add(time.Second)), 4; got != want {
		t.Errorf("after a later insert, matched %d blocks, want %d", got, want)
	}
}

// The least recently used blocks go first, and of one prompt its last
// blocks before its first, which every longer prompt with it needs.
func TestPrefixCacheEvictsLeastRecentlyUsed(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newPrefixCache(6 * blockTokens)
	a := blockHashes(seq(0, 4*blockTokens))
	b := blockHashes(seq(10_000, 4*blockTokens))
	c.insert(a, now)
	c.insert(b, now) // 8 blocks into 6: a's last two go
	if got, want := c.lookup(a, now), 2; got != want {
		t.Errorf("a: matched %d blocks, want its first %d", got, want)
	}
	// a was just used, so b's last two go next.
	c.insert(blockHashes(seq(20_000, 2*blockTokens)), now)
	if got, want := c.lookup(b, now), 2; got != want {
		t.Errorf("b: matched %d blocks, want %d", got, want)
	}
	if got, want := c.lookup(a, now), 2; got != want {
		t.Errorf("a after b's eviction: matched %d blocks, want %d", got, want)
	}
}

func TestCachedTokens(t *testing.T) {
	tests := []struct{ matched, prompt, want int }{
		{0, 100, 0},
		{2, 100, 32},
		{6, 100, 96},
		// All of it cached: the last token is computed again, so the
		// last block counts as not cached.
		{2, 32, 16},
		{1, 16, 0},
		{0, 0, 0},
	}
	for _, tc := range tests {
		if got := cachedTokens(tc.matched, tc.prompt); got != tc.want {
			t.Errorf("cachedTokens(%d, %d) = %d, want %d", tc.matched, tc.prompt, got, tc.want)
		}
	}
}

func TestPrefillLaneQueues(t *testing.T) {
	now := time.Unix(1000, 0)
	l := &prefillLane{perToken: time.Millisecond}
	if got, want := l.reserve(now, 100), now.Add(100*time.Millisecond); !got.Equal(want) {
		t.Errorf("first prefill ends at %v, want %v", got, want)
	}
	// A second prompt 10 ms later waits for the first.
	if got, want := l.reserve(now.Add(10*time.Millisecond), 50), now.Add(150*time.Millisecond); !got.Equal(want) {
		t.Errorf("queued prefill ends at %v, want %v", got, want)
	}
	// Once the lane is free, a prefill starts at once.
	if got, want := l.reserve(now.Add(time.Second), 10), now.Add(time.Second+10*time.Millisecond); !got.Equal(want) {
		t.Errorf("prefill on a free lane ends at %v, want %v", got, want)
	}
	free := &prefillLane{}
	if got := free.reserve(now, 1000); !got.Equal(now) {
		t.Errorf("without a time per token, a prefill ends at %v, want now", got)
	}
}

// prepareChat runs prepare for messages, as the chat handler does.
func prepareChat(t *testing.T, s *Server, msgs ...message) *chatAnswer {
	t.Helper()
	req := chatRequest{Model: "m", Messages: msgs}
	p, rerr := req.validate()
	if rerr != nil {
		t.Fatal(rerr)
	}
	a, rerr := s.prepare(httptest.NewRequest("POST", "/v1/chat/completions", nil), p, "m", "m")
	if rerr != nil {
		t.Fatal(rerr)
	}
	return a
}

func msg(role, text string) message {
	b, _ := json.Marshal(text)
	return message{Role: role, Content: b}
}

// longText is n sentences of text that differ with seed.
func longText(seed string, n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "Rule %d of the %s assistant: answer about topic %d with care. ", i, seed, i*7)
	}
	return b.String()
}

// A conversation's next turn finds its earlier turns, the answer
// included, in the cache, and only the rest is prefilled.
func TestConversationTurnsHitTheCache(t *testing.T) {
	const perToken = time.Microsecond
	s := New(Config{ServedName: "m", PrefixCacheTokens: 1 << 16, PrefillPerToken: perToken, TimeToFirstToken: 3 * time.Millisecond})
	system := msg("system", longText("billing", 40))
	first := prepareChat(t, s, system, msg("user", "How do I read my invoice?"))
	if first.cached != 0 {
		t.Errorf("first turn: %d cached tokens, want 0", first.cached)
	}
	if got, want := first.firstToken, time.Duration(first.prompt)*perToken+3*time.Millisecond; got != want {
		t.Errorf("first turn: first token after %v, want every prompt token prefilled: %v", got, want)
	}
	s.remember(first)

	s.lane = &prefillLane{perToken: perToken} // free again, as after a pause between turns
	second := prepareChat(t, s, system, msg("user", "How do I read my invoice?"),
		msg("assistant", first.choices[0].content), msg("user", "And the taxes on it?"))
	// Everything up to the end of the answer is cached, to a whole block.
	sent := first.prompt + CountTokens(first.choices[0].content) + 2
	if got, want := second.cached, sent/blockTokens*blockTokens; got != want {
		t.Errorf("second turn: %d cached tokens of %d, want %d (the first turn and its answer, in whole blocks)", got, second.prompt, want)
	}
	if got, want := second.firstToken, time.Duration(second.prompt-second.cached)*perToken+3*time.Millisecond; got != want {
		t.Errorf("second turn: first token after %v, want %v: only the uncached tokens prefilled", got, want)
	}

	// Another conversation with the same system prompt reuses it.
	other := prepareChat(t, s, system, msg("user", "Where is my refund?"))
	if other.cached < CountTokens(longText("billing", 40))/blockTokens*blockTokens-blockTokens {
		t.Errorf("a conversation with the same system prompt: %d cached tokens, want about the system prompt's %d", other.cached, CountTokens(longText("billing", 40)))
	}
	// One with another system prompt does not.
	stranger := prepareChat(t, s, msg("system", longText("travel", 40)), msg("user", "How do I read my invoice?"))
	if stranger.cached != 0 {
		t.Errorf("a conversation with another system prompt: %d cached tokens, want 0", stranger.cached)
	}
}

// Without a prefix cache nothing is cached, and the first token comes
// after TimeToFirstToken as before.
func TestNoPrefixCache(t *testing.T) {
	s := New(Config{ServedName: "m", TimeToFirstToken: time.Millisecond})
	a := prepareChat(t, s, msg("system", longText("x", 20)), msg("user", "hi"))
	s.remember(a)
	b := prepareChat(t, s, msg("system", longText("x", 20)), msg("user", "hi"))
	if a.cached != 0 || b.cached != 0 {
		t.Errorf("cached %d and %d tokens without a cache", a.cached, b.cached)
	}
	if b.firstToken != time.Millisecond {
		t.Errorf("first token after %v, want TimeToFirstToken", b.firstToken)
	}
}

// The template's reply priming is three tokens, as the prompt count has
// always had it, so a prompt and its answer spell the next turn's start.
func TestAssistantIsOneToken(t *testing.T) {
	if got := CountTokens("assistant"); got != 1 {
		t.Fatalf(`"assistant" is %d tokens; the reply priming must stay 3 tokens`, got)
	}
}

// The memo holds at most its tokens, least recently used dropped first,
// and gives the same ids as encoding.
func TestTokenMemo(t *testing.T) {
	m := &memo{maxTokens: 10, byText: map[string]*list.Element{}}
	m.put("a", seq(0, 4))
	m.put("b", seq(0, 4))
	if _, ok := m.get("a"); !ok { // a is now the most recent
		t.Fatal("a was not remembered")
	}
	m.put("c", seq(0, 4)) // 12 tokens: b goes
	if _, ok := m.get("b"); ok {
		t.Error("b is still remembered past the memo's size")
	}
	for _, k := range []string{"a", "c"} {
		if _, ok := m.get(k); !ok {
			t.Errorf("%s was dropped", k)
		}
	}
	if m.tokens != 8 {
		t.Errorf("the memo counts %d tokens, want 8", m.tokens)
	}

	text := longText("memo", 10)
	first, again := tokenIDs(text), tokenIDs(text)
	if fmt.Sprint(first) != fmt.Sprint(encodeIDs(text)) || fmt.Sprint(again) != fmt.Sprint(first) {
		t.Error("remembered token ids differ from the encoding")
	}
	if len(first) != CountTokens(text) {
		t.Errorf("%d ids, CountTokens says %d", len(first), CountTokens(text))
	}
}
