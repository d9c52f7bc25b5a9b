package routing

import "github.com/modelport/modelport/libs/state"

// Policy chooses the instance for a request among a service's usable
// ones. Each policy is a file of this package, named after it; a service
// names its policy in its record (state.Service.RoutingPolicy).
type Policy interface {
	// Choose returns one of cands, which is never empty. It is called
	// concurrently and must not keep cands.
	Choose(cands []*Endpoint, r Request) *Endpoint
}

// Request is what a policy may read of the request being routed.
type Request struct {
	// ServiceID is the service the request is for; Route sets it.
	ServiceID string
	// Messages are a chat request's messages, in order, as sent; none for
	// a request without a prompt.
	Messages []Message
}

// Message is one message of a chat prompt: its role and its content as
// the request's JSON has it (a string or an array of parts), not decoded.
type Message struct {
	Role    string
	Content []byte
}

// DefaultPolicies returns a policy of each name in state.RoutingPolicies,
// with its default settings.
func DefaultPolicies() map[string]Policy {
	return map[string]Policy{
		state.RoutingLeastOutstanding: LeastOutstanding{},
		state.RoutingPrefixAffinity:   NewPrefixAffinity(),
		state.RoutingRoundRobin:       NewRoundRobin(),
	}
}

// SetPolicy has the table route services that name the policy by p, as
// when a setting changes a policy's defaults.
func (t *Table) SetPolicy(name string, p Policy) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.policies[name] = p
}

// policy returns the policy of a name; least-outstanding for a name the
// table does not know, such as one a newer deployer wrote. t.mu must be
// held.
func (t *Table) policy(name string) Policy {
	if p, ok := t.policies[name]; ok {
		return p
	}
	return t.policies[state.RoutingLeastOutstanding]
}
