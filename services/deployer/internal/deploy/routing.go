package deploy

import (
	"context"
	"strings"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

// DefaultRouting returns the routing policy of a new service of task
// when its owner names none. Text generation is routed by prefix
// affinity: make bench's multi-turn chat workload shows it answers chat
// with a fraction of least-outstanding's time to first token at the same
// throughput (docs/benchmarks.md). Other tasks are routed by load.
func DefaultRouting(task string) string {
	if task == state.TaskTextGeneration {
		return state.RoutingPrefixAffinity
	}
	return state.RoutingLeastOutstanding
}

// ValidateRouting checks a routing policy's name; param is the field that
// holds it, for the error.
func ValidateRouting(policy, param string) error {
	for _, p := range state.RoutingPolicies {
		if policy == p {
			return nil
		}
	}
	msg := "must be one of " + strings.Join(state.RoutingPolicies, ", ")
	if policy == "" {
		return errs.InvalidParam(param, "%s is required: it %s", param, msg)
	}
	if near := closestPolicy(policy); near != "" {
		return errs.InvalidParam(param, "unknown routing policy %q (did you mean %q?); %s %s", policy, near, param, msg)
	}
	return errs.InvalidParam(param, "unknown routing policy %q; %s %s", policy, param, msg)
}

// closestPolicy returns the policy a mistyped name probably meant: one
// within a third of its length in edits, or that it is a part of.
func closestPolicy(name string) string {
	name = strings.ToLower(strings.TrimSpace(name))
	best, bestDist := "", len(name)/3+1
	for _, p := range state.RoutingPolicies {
		if d := editDistance(name, p); d < bestDist {
			best, bestDist = p, d
		}
	}
	if best != "" {
		return best
	}
	for _, p := range state.RoutingPolicies {
		if len(name) >= 4 && strings.Contains(p, name) {
			return p
		}
	}
	return ""
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// SetRouting sets how the router chooses a service's instance for each
// request. The router follows the services bucket, so the next request
// is routed by the new policy; nothing is announced. Another owner's
// service is NotFound, a deleting or deleted one Conflict.
func (m *Manager) SetRouting(ctx context.Context, caller auth.Key, id, policy string) (state.Service, error) {
	if err := ValidateRouting(policy, "policy"); err != nil {
		return state.Service{}, err
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		s, rev, err := m.owned(ctx, caller, id)
		if err != nil {
			return state.Service{}, err
		}
		if s.Status == state.StatusDeleting || s.Status == state.StatusDeleted {
			return state.Service{}, errs.E(errs.Conflict, "service %s is %s and cannot be changed", id, s.Status)
		}
		if s.RoutingPolicy == policy {
			return s, nil
		}
		s.RoutingPolicy, s.UpdatedAt = policy, m.now()
		err = m.store.Update(ctx, s, rev)
		if errs.KindOf(err) == errs.Conflict {
			continue
		}
		if err != nil {
			return state.Service{}, err
		}
		return s, nil
	}
	return state.Service{}, errs.E(errs.Unavailable, "service %s is changing too often; retry", id)
}
