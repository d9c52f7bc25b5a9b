package deploy_test

import (
	"context"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

func TestSetRouting(t *testing.T) {
	restricted := auth.Key{ID: "k-ci", OwnerID: alice.OwnerID, Services: []string{"s1"}}
	tests := []struct {
		name      string
		caller    auth.Key
		status    string
		policy    string
		wantKind  errs.Kind // Internal means success
		wantMsg   string    // a part of the error message
		wantWrite bool
	}{
		{name: "to prefix-affinity", caller: alice, status: state.StatusRunning, policy: state.RoutingPrefixAffinity, wantWrite: true},
		{name: "to round-robin", caller: alice, status: state.StatusRunning, policy: state.RoutingRoundRobin, wantWrite: true},
		{name: "unchanged: no write", caller: alice, status: state.StatusRunning, policy: state.RoutingLeastOutstanding},
		{name: "while deploying", caller: alice, status: state.StatusDeploying, policy: state.RoutingPrefixAffinity, wantWrite: true},
		{name: "admin", caller: admin, status: state.StatusRunning, policy: state.RoutingPrefixAffinity, wantWrite: true},
		{name: "a typo", caller: alice, status: state.StatusRunning, policy: "prefix-afinity", wantKind: errs.Invalid, wantMsg: `did you mean "prefix-affinity"`},
		{name: "a part", caller: alice, status: state.StatusRunning, policy: "prefix", wantKind: errs.Invalid, wantMsg: `did you mean "prefix-affinity"`},
		{name: "unknown", caller: alice, status: state.StatusRunning, policy: "fastest", wantKind: errs.Invalid, wantMsg: "least-outstanding, prefix-affinity, round-robin"},
		{name: "empty", caller: alice, status: state.StatusRunning, policy: "", wantKind: errs.Invalid, wantMsg: "required"},
		{name: "another owner", caller: bob, status: state.StatusRunning, policy: state.RoutingPrefixAffinity, wantKind: errs.NotFound},
		{name: "a restricted key", caller: restricted, status: state.StatusRunning, policy: state.RoutingPrefixAffinity, wantKind: errs.Forbidden},
		{name: "deleting", caller: alice, status: state.StatusDeleting, policy: state.RoutingPrefixAffinity, wantKind: errs.Conflict},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, st, pub := newManager()
			st.put(state.Service{ID: "s1", OwnerID: alice.OwnerID, Name: "chat", Instances: 1, Status: tc.status, RoutingPolicy: state.RoutingLeastOutstanding})
			s, err := m.SetRouting(context.Background(), tc.caller, "s1", tc.policy)
			if tc.wantKind != errs.Internal {
				if got, want := errs.KindOf(err), tc.wantKind; got != want {
					t.Fatalf("kind = %v, want %v (err %v)", got, want, err)
				}
				if e, _ := errs.As(err); tc.wantKind == errs.Invalid && (e.Param != "policy" || !strings.Contains(e.Msg, tc.wantMsg)) {
					t.Errorf("error %q on %q, want one on policy saying %q", e.Msg, e.Param, tc.wantMsg)
				}
				if st.updates != 0 {
					t.Errorf("%d updates, want none", st.updates)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.RoutingPolicy != tc.policy {
				t.Errorf("returned policy %q, want %q", s.RoutingPolicy, tc.policy)
			}
			if got := st.service(t, "s1"); got.RoutingPolicy != tc.policy || got != s {
				t.Errorf("stored %+v, returned %+v", got, s)
			}
			if got, want := st.updates > 0, tc.wantWrite; got != want {
				t.Errorf("wrote %v, want %v", got, want)
			}
			if len(pub.events) != 0 {
				t.Errorf("published %d events; the router follows the bucket, nothing is announced", len(pub.events))
			}
		})
	}
}
