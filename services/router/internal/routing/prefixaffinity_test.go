package routing_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/routing"
)

// withPolicy is a service routed by policy.
func withPolicy(id, policy string) state.Service {
	s := service(id, "u-o/"+id)
	s.RoutingPolicy = policy
	return s
}

// tableOf returns a table with service s1 routed by policy and ready
// instances i0 … i(n-1).
func tableOf(policy string, n int) *routing.Table {
	tb := routing.NewTable()
	tb.PutService(withPolicy("s1", policy))
	for i := range n {
		tb.PutInstance(ready("s1", fmt.Sprintf("i%d", i)))
	}
	return tb
}

// conversation is a chat: a system prompt and turns of user and
// assistant messages.
type conversation struct {
	system string
	turns  []string // user, assistant, user, …
}

func newConversation(system string, i int) *conversation {
	c := &conversation{system: system}
	for t := range 6 {
		c.turns = append(c.turns, fmt.Sprintf("question %d of conversation %d", t, i), fmt.Sprintf("answer %d of conversation %d, at some length", t, i))
	}
	return c
}

// turn returns the request of turn t (from 0): the system prompt and
// every message before the turn's user message, that one included.
func (c *conversation) turn(t int) routing.Request {
	msgs := []routing.Message{{Role: "system", Content: []byte(`"` + c.system + `"`)}}
	for i, text := range c.turns[:2*t+1] {
		role := "user"
		if i%2 == 1 {
			role = "assistant"
		}
		msgs = append(msgs, routing.Message{Role: role, Content: []byte(`"` + text + `"`)})
	}
	return routing.Request{Messages: msgs}
}

func systemPrompt(i int) string {
	return fmt.Sprintf("You are assistant number %d. ", i) + strings.Repeat("Follow the house rules and answer with care. ", 40)
}

// route routes r to s1 and lets the request end at once.
func route(t *testing.T, tb *routing.Table, r routing.Request) string {
	t.Helper()
	e, release, ok := tb.Route("s1", r)
	if !ok {
		t.Fatal("no instance")
	}
	release()
	return e.Instance.ID
}

// Every turn of a conversation goes where its first went, while load
// allows, and conversations spread over the instances.
func TestPrefixAffinityKeepsAConversationOnItsInstance(t *testing.T) {
	tb := tableOf(state.RoutingPrefixAffinity, 4)
	perInstance := map[string]int{}
	for i := range 200 {
		c := newConversation(systemPrompt(i), i)
		home := route(t, tb, c.turn(0))
		perInstance[home]++
		for turn := 1; turn < 6; turn++ {
			if got := route(t, tb, c.turn(turn)); got != home {
				t.Fatalf("conversation %d, turn %d went to %s, its first turn to %s", i, turn, got, home)
			}
		}
	}
	for id, n := range perInstance {
		if n < 25 || n > 75 {
			t.Errorf("%s is home to %d of 200 conversations, want about 50: %v", id, n, perInstance)
		}
	}
	if len(perInstance) != 4 {
		t.Errorf("conversations live on %d instances, want 4: %v", len(perInstance), perInstance)
	}
}

// Conversations that share a system prompt but open differently spread
// over the instances, each keeping its own.
func TestPrefixAffinitySpreadsConversationsSharingASystemPrompt(t *testing.T) {
	tb := tableOf(state.RoutingPrefixAffinity, 4)
	shared := systemPrompt(0)
	perInstance := map[string]int{}
	for i := range 100 {
		c := newConversation(shared, i)
		home := route(t, tb, c.turn(0))
		perInstance[home]++
		if got := route(t, tb, c.turn(3)); got != home {
			t.Errorf("conversation %d moved from %s to %s", i, home, got)
		}
	}
	for _, id := range []string{"i0", "i1", "i2", "i3"} {
		if perInstance[id] < 10 {
			t.Errorf("%s is home to %d of 100 conversations sharing a system prompt: %v", id, perInstance[id], perInstance)
		}
	}
}

// A hot prefix fills its instance up to the bound, then spills to the
// least loaded: no instance ever holds more than the load factor times
// the average, rounded up. Once the load is gone, it goes home again.
func TestPrefixAffinityBoundsLoad(t *testing.T) {
	tb := tableOf(state.RoutingPrefixAffinity, 4)
	hot := newConversation(systemPrompt(7), 7).turn(0)
	home := route(t, tb, hot)
	out := map[string]int64{}
	var releases []func()
	for n := 1; n <= 40; n++ {
		least := int64(1 << 62)
		for _, l := range tb.Loads() {
			least = min(least, l.Outstanding)
		}
		e, release, ok := tb.Route("s1", hot)
		if !ok {
			t.Fatal("no instance")
		}
		releases = append(releases, release)
		id := e.Instance.ID
		if id != home && out[id] != least {
			t.Errorf("request %d spilled to %s with %d in flight; the least loaded had %d", n, id, out[id], least)
		}
		out[id]++
		if limit := math.Ceil(routing.DefaultLoadFactor * float64(n) / 4); float64(out[id]) > limit {
			t.Errorf("request %d: %s holds %d requests, over %.2f× the average rounded up (%.0f)", n, id, out[id], routing.DefaultLoadFactor, limit)
		}
	}
	if out[home] != 13 { // ⌈1.25 × 40/4⌉
		t.Errorf("the hot prefix's home holds %d of 40 requests, want the bound, 13: %v", out[home], out)
	}
	for _, r := range releases {
		r()
	}
	if got := route(t, tb, hot); got != home {
		t.Errorf("with the load gone the hot prefix went to %s, not home to %s", got, home)
	}
}

// The bound is a setting: at 2× the hot prefix keeps its home longer.
func TestPrefixAffinityLoadFactorSetting(t *testing.T) {
	tb := tableOf(state.RoutingPrefixAffinity, 4)
	tb.SetPolicy(state.RoutingPrefixAffinity, &routing.PrefixAffinity{LoadFactor: 2, PrefixBytes: routing.DefaultPrefixBytes})
	hot := newConversation(systemPrompt(3), 3).turn(0)
	home := route(t, tb, hot)
	held := 0
	for range 40 {
		e, release, _ := tb.Route("s1", hot)
		defer release()
		if e.Instance.ID == home {
			held++
		}
	}
	if held != 20 { // 2 × 40/4
		t.Errorf("home holds %d of 40 at load factor 2, want 20", held)
	}
}

// Adding an instance moves only the conversations it becomes home to,
// about a fifth of them; removing one moves only its own.
func TestPrefixAffinityIsStableWhenInstancesComeAndGo(t *testing.T) {
	tb := tableOf(state.RoutingPrefixAffinity, 4)
	var convs []routing.Request
	homes := map[int]string{}
	for i := range 1000 {
		convs = append(convs, newConversation(systemPrompt(i), i).turn(0))
		homes[i] = route(t, tb, convs[i])
	}

	tb.PutInstance(ready("s1", "i4"))
	moved := 0
	for i, r := range convs {
		got := route(t, tb, r)
		if got != homes[i] {
			if got != "i4" {
				t.Fatalf("conversation %d moved from %s to %s, not to the new instance", i, homes[i], got)
			}
			moved++
			homes[i] = got
		}
	}
	if moved < 120 || moved > 280 {
		t.Errorf("adding a fifth instance moved %d of 1000 conversations, want about 200", moved)
	}

	tb.DeleteInstance("s1", "i1")
	moved = 0
	for i, r := range convs {
		got := route(t, tb, r)
		switch {
		case homes[i] == "i1" && got == "i1":
			t.Fatalf("conversation %d still goes to the removed instance", i)
		case homes[i] == "i1":
			moved++
		case got != homes[i]:
			t.Fatalf("removing i1 moved conversation %d from %s to %s", i, homes[i], got)
		}
	}
	if moved == 0 {
		t.Error("no conversation lived on i1")
	}
}

// A prefix whose home failed or was already tried goes elsewhere.
func TestPrefixAffinitySkipsExcludedInstances(t *testing.T) {
	tb := tableOf(state.RoutingPrefixAffinity, 3)
	r := newConversation(systemPrompt(1), 1).turn(0)
	home := route(t, tb, r)
	e, release, ok := tb.Route("s1", r, home)
	if !ok || e.Instance.ID == home {
		t.Fatalf("with %s excluded got %v, %v", home, e, ok)
	}
	release()
}

func TestPrefixKey(t *testing.T) {
	msg := func(role, text string) routing.Message {
		return routing.Message{Role: role, Content: []byte(`"` + text + `"`)}
	}
	key := func(limit int, msgs ...routing.Message) uint64 {
		k, ok := routing.PrefixKey(msgs, limit)
		if !ok {
			t.Fatalf("no key for %v", msgs)
		}
		return k
	}
	sys, u1 := msg("system", "Be brief."), msg("user", "Hello")
	base := key(0, sys, u1)
	if got := key(0, sys, u1, msg("assistant", "Hi!"), msg("user", "How are you?")); got != base {
		t.Error("a later turn of the conversation has another key")
	}
	if key(0, sys, msg("user", "Goodbye")) == base {
		t.Error("another first question has the same key")
	}
	if key(0, msg("system", "Be long."), u1) == base {
		t.Error("another system prompt has the same key")
	}
	if key(0, msg("system", "Be brief.\"},{\"role\":\"user"), u1) == key(0, msg("system", "Be brief."), msg("user", "\"},{\"role\":\"user"), u1) {
		t.Error("different messages hash alike")
	}
	// Only the first limit bytes count.
	a := key(20, msg("system", "The same first twenty bytes, then A"), u1)
	b := key(20, msg("system", "The same first twenty bytes, then B"), u1)
	if a != b {
		t.Error("prompts that agree on the first 20 bytes have different keys at limit 20")
	}
	if _, ok := routing.PrefixKey(nil, 0); ok {
		t.Error("a request without messages has a key")
	}
}

// Without messages (an image generation) prefix-affinity routes by load.
func TestPrefixAffinityWithoutMessagesRoutesByLoad(t *testing.T) {
	tb := tableOf(state.RoutingPrefixAffinity, 2)
	defer hold(t, tb, "s1", "i0", []string{"i0", "i1"})()
	for range 5 {
		if got := route(t, tb, routing.Request{}); got != "i1" {
			t.Fatalf("went to %s while i0 is busy and i1 idle", got)
		}
	}
}

// The table routes each service by the policy its record names, follows
// a change of it, and routes an unknown one by load.
func TestRoutingPolicyFromTheServiceRecord(t *testing.T) {
	tb := tableOf(state.RoutingRoundRobin, 3)
	var got []string
	for range 6 {
		got = append(got, route(t, tb, routing.Request{}))
	}
	if got[0] == got[1] || got[1] == got[2] || got[0] == got[2] || got[3] != got[0] || got[4] != got[1] || got[5] != got[2] {
		t.Errorf("round-robin went to %v, want each instance in turn", got)
	}

	r := newConversation(systemPrompt(5), 5).turn(0)
	tb.PutService(withPolicy("s1", state.RoutingPrefixAffinity))
	home := route(t, tb, r)
	for range 5 {
		if got := route(t, tb, r); got != home {
			t.Fatalf("after the switch to prefix-affinity the conversation went to %s and %s", home, got)
		}
	}

	for _, policy := range []string{state.RoutingLeastOutstanding, "fastest-first"} {
		tb.PutService(withPolicy("s1", policy))
		release := hold(t, tb, "s1", home, []string{"i0", "i1", "i2"})
		for range 5 {
			if got := route(t, tb, r); got == home {
				t.Errorf("%s: went to the busy %s while two instances are idle", policy, home)
			}
		}
		release()
	}
}

// BenchmarkRoute is the cost of choosing an instance for a chat request
// of a long conversation (a 6 KiB system prompt, 10 turns), by policy and
// number of instances.
func BenchmarkRoute(b *testing.B) {
	c := newConversation(strings.Repeat("You are a helpful assistant for a large retailer. ", 120), 1)
	for len(c.turns) < 20 {
		c.turns = append(c.turns, strings.Repeat("more conversation ", 20))
	}
	r := c.turn(9)
	for _, policy := range []string{state.RoutingLeastOutstanding, state.RoutingRoundRobin, state.RoutingPrefixAffinity} {
		for _, n := range []int{4, 16, 64} {
			b.Run(fmt.Sprintf("%s/%d-instances", policy, n), func(b *testing.B) {
				tb := tableOf(policy, n)
				b.ReportAllocs()
				for b.Loop() {
					_, release, _ := tb.Route("s1", r)
					release()
				}
			})
		}
	}
}

// Requests that wait for an instance are routed by the service's policy
// too: a conversation's turns acquired while instances are up go home,
// and a request held until the service's instances come up is handed to
// its home, not to the least loaded.
func TestAcquireRoutesByThePolicy(t *testing.T) {
	t.Run("instances up", func(t *testing.T) {
		tb := tableOf(state.RoutingPrefixAffinity, 3)
		for i := range 4 {
			c := newConversation(systemPrompt(i), i)
			home := route(t, tb, c.turn(0))
			for k := range 5 {
				e, release, err := tb.Acquire(context.Background(), "s1", c.turn(k), nil)
				if err != nil {
					t.Fatal(err)
				}
				release()
				if e.Instance.ID != home {
					t.Fatalf("conversation %d: turn %d acquired %s, its home is %s", i, k, e.Instance.ID, home)
				}
			}
		}
	})

	t.Run("held", func(t *testing.T) {
		// A conversation at home on i0 of i0 and i1.
		homes := tableOf(state.RoutingPrefixAffinity, 2)
		var c *conversation
		for i := 0; c == nil; i++ {
			if cand := newConversation(systemPrompt(i), i); route(t, homes, cand.turn(0)) == "i0" {
				c = cand
			}
		}
		tb := routing.NewTable()
		tb.SpreadWait = time.Minute
		svc := withPolicy("s1", state.RoutingPrefixAffinity)
		svc.Instances = 2
		tb.PutService(svc)
		got := make(chan acquired, 2)
		for i, r := range []routing.Request{newConversation(systemPrompt(-1), -1).turn(0), c.turn(1)} {
			held := make(chan struct{})
			go func() {
				e, release, err := tb.Acquire(context.Background(), "s1", r, func() { close(held) })
				a := acquired{order: i, release: release, err: err}
				if err == nil {
					a.instance = e.Instance.ID
				}
				got <- a
			}()
			select {
			case <-held:
			case <-time.After(5 * time.Second):
				t.Fatalf("request %d not held", i)
			}
		}
		// i0 comes first and takes its share, the first request; i1
		// comes and the second is handed out with i0 busier.
		tb.PutInstance(ready("s1", "i0"))
		first := <-got
		defer first.release()
		tb.PutInstance(ready("s1", "i1"))
		second := <-got
		if second.err != nil {
			t.Fatal(second.err)
		}
		defer second.release()
		if first.instance != "i0" || second.instance != "i0" {
			t.Errorf("held requests went to %s and %s; want i0, the only one up, then i0, the second's home", first.instance, second.instance)
		}
	})
}
