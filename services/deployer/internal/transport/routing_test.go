package transport_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/state"
)

// A service's routing policy through the control API: chosen at create
// (the task's default when not), reported on the service, changed with
// PUT /api/v1/services/{id}/routing, and stored in the services bucket,
// where the router reads it. Unknown policies and fields are 400s that
// say what was probably meant.
func TestRoutingPolicyHTTP(t *testing.T) {
	e := newEnv(t)
	chat := e.create(e.alice, "chat")
	if got, want := chat.RoutingPolicy, state.RoutingPrefixAffinity; got != want {
		t.Errorf("a text-generation service is routed by %q, want %q by default", got, want)
	}
	var painter state.Service
	if resp := e.do(e.alice, "POST", "/api/v1/services", `{"name":"painter","base_model":"stable-diffusion-xl"}`, &painter); resp.StatusCode != 201 {
		t.Fatalf("create painter: status %d", resp.StatusCode)
	}
	if got, want := painter.RoutingPolicy, state.RoutingLeastOutstanding; got != want {
		t.Errorf("an image-generation service is routed by %q, want %q by default", got, want)
	}
	var rr state.Service
	if resp := e.do(e.alice, "POST", "/api/v1/services", `{"name":"rr","base_model":"qwen2.5-7b-instruct","routing_policy":"round-robin"}`, &rr); resp.StatusCode != 201 || rr.RoutingPolicy != state.RoutingRoundRobin {
		t.Fatalf("create with round-robin: status %d, policy %q", resp.StatusCode, rr.RoutingPolicy)
	}

	refused := []struct {
		name, method, path, body, param, msg string
	}{
		{"create: a typo", "POST", "/api/v1/services", `{"name":"x","base_model":"qwen2.5-7b-instruct","routing_policy":"least-outstandng"}`, "routing_policy", `did you mean "least-outstanding"`},
		{"create: unknown", "POST", "/api/v1/services", `{"name":"x","base_model":"qwen2.5-7b-instruct","routing_policy":"random"}`, "routing_policy", "least-outstanding, prefix-affinity, round-robin"},
		{"create: not a string", "POST", "/api/v1/services", `{"name":"x","base_model":"qwen2.5-7b-instruct","routing_policy":1}`, "routing_policy", "string"},
		{"create: a field misnamed", "POST", "/api/v1/services", `{"name":"x","base_model":"qwen2.5-7b-instruct","routing":"prefix-affinity"}`, "routing", "routing_policy"},
		{"set: unknown", "PUT", "/api/v1/services/" + chat.ID + "/routing", `{"policy":"sticky"}`, "policy", "least-outstanding, prefix-affinity, round-robin"},
		{"set: a typo", "PUT", "/api/v1/services/" + chat.ID + "/routing", `{"policy":"round-robbin"}`, "policy", `did you mean "round-robin"`},
		{"set: missing", "PUT", "/api/v1/services/" + chat.ID + "/routing", `{}`, "policy", "required"},
		{"set: a field misnamed", "PUT", "/api/v1/services/" + chat.ID + "/routing", `{"polcy":"round-robin"}`, "polcy", `"policy"`},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			var got apiErrorMsg
			resp := e.do(e.alice, tc.method, tc.path, tc.body, &got)
			if resp.StatusCode != http.StatusBadRequest || got.param() != tc.param || !strings.Contains(got.Error.Message, tc.msg) {
				t.Errorf("status %d, param %q, message %q; want 400 on %q saying %q", resp.StatusCode, got.param(), got.Error.Message, tc.param, tc.msg)
			}
		})
	}

	var changed state.Service
	if resp := e.do(e.alice, "PUT", "/api/v1/services/"+chat.ID+"/routing", `{"policy":"least-outstanding"}`, &changed); resp.StatusCode != 200 || changed.RoutingPolicy != state.RoutingLeastOutstanding {
		t.Fatalf("set: status %d, policy %q", resp.StatusCode, changed.RoutingPolicy)
	}
	var got state.Service
	if e.do(e.alice, "GET", "/api/v1/services/"+chat.ID, "", &got); got.RoutingPolicy != state.RoutingLeastOutstanding {
		t.Errorf("GET reports %q after the change", got.RoutingPolicy)
	}
	// What the router reads: the services bucket's record.
	entry, err := e.bus.KV(state.BucketServices).Get(context.Background(), chat.ID)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(entry.Value(), &rec); err != nil || rec["routing_policy"] != state.RoutingLeastOutstanding {
		t.Errorf("the bucket record has routing_policy %v (%v)", rec["routing_policy"], err)
	}
	if resp := e.do(e.bob, "PUT", "/api/v1/services/"+chat.ID+"/routing", `{"policy":"round-robin"}`, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("another owner's change: status %d, want 404", resp.StatusCode)
	}
}

// A record stored before services had a routing policy reads as
// least-outstanding, what such services were routed by.
func TestRoutingPolicyOfAnOlderRecord(t *testing.T) {
	e := newEnv(t)
	s := e.create(e.alice, "old")
	kv := e.bus.KV(state.BucketServices)
	entry, err := kv.Get(context.Background(), s.ID)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(entry.Value(), &rec); err != nil {
		t.Fatal(err)
	}
	delete(rec, "routing_policy")
	b, _ := json.Marshal(rec)
	if _, err := kv.Put(context.Background(), s.ID, b); err != nil {
		t.Fatal(err)
	}
	var got state.Service
	e.do(e.alice, "GET", "/api/v1/services/"+s.ID, "", &got)
	var list []state.Service
	e.do(e.alice, "GET", "/api/v1/services", "", &list)
	if got.RoutingPolicy != state.RoutingLeastOutstanding || len(list) != 1 || list[0].RoutingPolicy != state.RoutingLeastOutstanding {
		t.Errorf("an older record reads as %q (list: %+v), want least-outstanding", got.RoutingPolicy, list)
	}
}
