package simulator

import (
	"container/list"
	"sync"
	"time"
)

// blockTokens is the size of a prefix-cache block, in tokens: vLLM's
// default, and the granularity at which a prompt's prefix can be reused.
const blockTokens = 16

// prefixCache is one instance's cache of the attention state of prompts
// it has computed, as an engine with automatic prefix caching keeps it:
// prompts are cut into blocks of blockTokens, each named by a hash of its
// tokens and of every token before it, so a block matches only where the
// whole prefix up to it matches. Blocks are evicted least recently used
// first, once the cache holds more than its capacity in tokens. It is
// safe for concurrent use.
type prefixCache struct {
	maxBlocks int

	mu     sync.Mutex
	lru    list.List // of *cachedBlock, most recently used first
	blocks map[uint64]*list.Element
}

type cachedBlock struct {
	hash uint64
	// ready is when the block's attention state is computed (its
	// prefill ends): a request arriving before then cannot reuse it.
	ready time.Time
}

// newPrefixCache returns a cache holding up to capacity tokens, or nil,
// which caches nothing, when capacity is less than a block.
func newPrefixCache(capacity int) *prefixCache {
	if capacity < blockTokens {
		return nil
	}
	return &prefixCache{maxBlocks: capacity / blockTokens, blocks: map[uint64]*list.Element{}}
}

// blockHashes returns the chained hashes of the whole blocks of tokens; a
// trailing partial block is not cached, as in engines.
func blockHashes(tokens []uint32) []uint64 {
	out := make([]uint64, 0, len(tokens)/blockTokens)
	h := uint64(14695981039346656037) // FNV-1a offset basis
	for i := 0; i+blockTokens <= len(tokens); i += blockTokens {
		for _, t := range tokens[i : i+blockTokens] {
			h = (h ^ uint64(t)) * 1099511628211 // FNV-1a prime, over whole tokens
		}
		// Each block's hash goes on from the one before: it names the
		// whole prefix.
		out = append(out, h)
	}
	return out
}

// lookup returns how many leading blocks of hashes are cached and
// computed by now, and marks them used.
func (c *prefixCache) lookup(hashes []uint64, now time.Time) int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, h := range hashes {
		e, ok := c.blocks[h]
		if !ok || e.Value.(*cachedBlock).ready.After(now) {
			break
		}
		n++
	}
	// Touch the matched blocks last to first, so the first blocks of a
	// prefix, which every longer prompt needs, are the last evicted.
	for i := n - 1; i >= 0; i-- {
		c.lru.MoveToFront(c.blocks[hashes[i]])
	}
	return n
}

// insert records hashes as computed from ready on, keeping an earlier
// time for a block already cached, and evicts the least recently used
// blocks beyond the capacity.
func (c *prefixCache) insert(hashes []uint64, ready time.Time) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(hashes) - 1; i >= 0; i-- { // as in lookup: the first blocks end most recent
		h := hashes[i]
		if e, ok := c.blocks[h]; ok {
			if b := e.Value.(*cachedBlock); ready.Before(b.ready) {
				b.ready = ready
			}
			c.lru.MoveToFront(e)
			continue
		}
		c.blocks[h] = c.lru.PushFront(&cachedBlock{hash: h, ready: ready})
	}
	for c.lru.Len() > c.maxBlocks {
		e := c.lru.Back()
		c.lru.Remove(e)
		delete(c.blocks, e.Value.(*cachedBlock).hash)
	}
}

// cachedTokens is how many of a prompt's tokens count as read from the
// cache when matched blocks of it are: never the whole prompt, since an
// engine computes at least the last token again to start the answer.
func cachedTokens(matched, prompt int) int {
	n := matched * blockTokens
	if n >= prompt {
		n = (prompt - 1) / blockTokens * blockTokens
	}
	return max(n, 0)
}

// prefillLane is an instance's compute for prompts: prefills queue for it
// one after another, each taking its uncached tokens times the time per
// token, as an engine's prefill throughput is shared by the requests it
// serves. It is safe for concurrent use.
type prefillLane struct {
	perToken time.Duration

	mu   sync.Mutex
	free time.Time // when the prefills queued so far are done
}

// reserve queues a prefill of tokens arriving at now and returns when it
// ends. The time stays reserved even if the client goes away meanwhile.
func (l *prefillLane) reserve(now time.Time, tokens int) time.Time {
	if l.perToken <= 0 || tokens <= 0 {
		return now
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	start := now
	if l.free.After(start) {
		start = l.free
	}
	l.free = start.Add(time.Duration(tokens) * l.perToken)
	return l.free
}
