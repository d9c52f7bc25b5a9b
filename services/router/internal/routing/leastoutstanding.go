package routing

import "math/rand/v2"

// LeastOutstanding sends each request to the instance with the fewest
// requests in flight, ties broken at random: the policy that knows
// nothing of the request.
type LeastOutstanding struct{}

// Choose implements Policy.
func (LeastOutstanding) Choose(cands []*Endpoint, _ Request) *Endpoint {
	var best *Endpoint
	ties := 0
	for _, c := range cands {
		switch {
		case best == nil || c.Outstanding() < best.Outstanding():
			best, ties = c, 1
		case c.Outstanding() == best.Outstanding():
			ties++
			if rand.IntN(ties) == 0 { // reservoir sampling over the tied
				best = c
			}
		}
	}
	return best
}
