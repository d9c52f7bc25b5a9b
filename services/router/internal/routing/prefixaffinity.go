package routing

import (
	"math"

	"github.com/cespare/xxhash/v2"
)

// Defaults of PrefixAffinity.
const (
	DefaultLoadFactor  = 1.25
	DefaultPrefixBytes = 64 << 10
)

// PrefixAffinity sends requests that begin alike to the same instance, so
// that the engine finds their common beginning in its prefix cache and
// computes only the rest before the first token.
//
// The prefix it keys on is the part of a chat prompt that every later
// turn of the conversation sends again unchanged: the messages up to and
// including the first user message (system and developer prompts,
// examples, the opening question), as bytes, never tokenized. Turn after
// turn a conversation keeps its key, and so its instance; conversations
// that share a system prompt but open differently spread over the
// instances, each of which then holds the shared prompt as well.
//
// Keys map to instances by rendezvous hashing: each instance weighs each
// key by a hash of both, and the heaviest is the key's home. Adding an
// instance moves to it only the keys it now weighs most, about 1/n of
// them; removing one moves only its own keys, each to its next heaviest.
// Every router computes the same homes, with no state to share.
//
// Load is bounded: the home takes the request only while, with it, its
// requests in flight stay within LoadFactor times the average of the
// usable instances, rounded up (so an idle home always may); otherwise
// the request goes to the least loaded instance, ties to the heavier for
// the key, so that a hot prefix spills to the same few instances.
//
// It is safe for concurrent use, and costs a hash of the prefix bytes and
// one of each instance's ID per request: microseconds, not a tokenizer
// pass.
type PrefixAffinity struct {
	// LoadFactor is the bound on an instance's requests in flight, as a
	// multiple of the average; at least 1.
	LoadFactor float64
	// PrefixBytes bounds the bytes of the prefix hashed: prompts that
	// agree on their first PrefixBytes bytes share a home.
	PrefixBytes int
}

// NewPrefixAffinity returns a PrefixAffinity with the default load factor
// and prefix length.
func NewPrefixAffinity() *PrefixAffinity {
	return &PrefixAffinity{LoadFactor: DefaultLoadFactor, PrefixBytes: DefaultPrefixBytes}
}

// Choose implements Policy.
func (p *PrefixAffinity) Choose(cands []*Endpoint, r Request) *Endpoint {
	key, ok := PrefixKey(r.Messages, p.PrefixBytes)
	if !ok || len(cands) == 1 {
		return LeastOutstanding{}.Choose(cands, r)
	}
	var total int64
	home, homeWeight := cands[0], weight(key, cands[0])
	for _, c := range cands {
		total += c.Outstanding()
		if w := weight(key, c); w > homeWeight {
			home, homeWeight = c, w
		}
	}
	// The bound counts this request: ⌈LoadFactor × average⌉, so the home
	// of a lone request always takes it.
	if bound := math.Ceil(max(p.LoadFactor, 1) * float64(total+1) / float64(len(cands))); float64(home.Outstanding()+1) <= bound {
		return home
	}
	// Over its bound: the least loaded, the heavier for the key on a tie.
	var best *Endpoint
	var bestWeight uint64
	for _, c := range cands {
		if best == nil || c.Outstanding() < best.Outstanding() {
			best, bestWeight = c, weight(key, c)
		} else if c.Outstanding() == best.Outstanding() {
			if w := weight(key, c); w > bestWeight {
				best, bestWeight = c, w
			}
		}
	}
	return best
}

// PrefixKey hashes the prefix of a chat prompt PrefixAffinity routes by:
// each message's role and content, up to and including the first user
// message, at most limit bytes of them. It reports false for a request
// without messages.
func PrefixKey(msgs []Message, limit int) (uint64, bool) {
	if len(msgs) == 0 {
		return 0, false
	}
	if limit <= 0 {
		limit = DefaultPrefixBytes
	}
	d := xxhash.New()
	left := limit
	for _, m := range msgs {
		// Role, unit separator, content, record separator: no two
		// different message lists write the same bytes.
		n, _ := d.WriteString(m.Role[:min(len(m.Role), left)])
		left -= n
		n, _ = d.WriteString("\x1f"[:min(1, left)])
		left -= n
		n, _ = d.Write(m.Content[:min(len(m.Content), left)])
		left -= n
		n, _ = d.WriteString("\x1e"[:min(1, left)])
		left -= n
		if m.Role == "user" || left == 0 {
			break
		}
	}
	return d.Sum64(), true
}

// weight is the rendezvous weight of an instance for key.
func weight(key uint64, e *Endpoint) uint64 {
	h := e.idHash.Load()
	if h == 0 { // first use; a hash that is 0 is merely computed each time
		h = xxhash.Sum64String(e.Instance.ID)
		e.idHash.Store(h)
	}
	return mix(key ^ h)
}

// mix is SplitMix64's finalizer: every bit of x moves every bit of the
// result, so weights of nearby inputs are unrelated.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
