package gateway_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/gateway"
)

// turnBody is turn t (from 0) of conversation i, as a chat client sends
// it: its system prompt and every earlier turn.
func turnBody(model string, i, t int) []byte {
	msgs := []string{fmt.Sprintf(`{"role":"system","content":"You are assistant %d. %s"}`, i, strings.Repeat("Be exact. ", 50))}
	for k := 0; k <= t; k++ {
		msgs = append(msgs, fmt.Sprintf(`{"role":"user","content":"question %d"}`, k))
		if k < t {
			msgs = append(msgs, fmt.Sprintf(`{"role":"assistant","content":"answer %d"}`, k))
		}
	}
	return []byte(`{"model":"` + model + `","messages":[` + strings.Join(msgs, ",") + `]}`)
}

// A service routed by prefix-affinity gets each conversation's turns on
// one instance: the gateway hands the policy the prompt's messages.
func TestChatRoutesByThePromptPrefix(t *testing.T) {
	f := newFixture()
	svc := aliceChat
	svc.RoutingPolicy = state.RoutingPrefixAffinity
	f.table.PutService(svc)
	homes := map[string]int{}
	for i := range 20 {
		var first string
		for turn := range 4 {
			before := len(f.eng.endpoints())
			if _, err := complete(f.g, context.Background(), alice, fmt.Sprintf("req-%d-%d", i, turn), turnBody(svc.AccessName, i, turn)); err != nil {
				t.Fatal(err)
			}
			got := f.eng.endpoints()[before]
			if turn == 0 {
				first = got
				homes[got]++
			} else if got != first {
				t.Fatalf("conversation %d: turn %d went to %s, turn 0 to %s", i, turn, got, first)
			}
		}
	}
	if len(homes) != 2 {
		t.Errorf("20 conversations live on %v, want both instances", homes)
	}
}

// The usage event records the prompt tokens the engine found in its
// prefix cache, as it reported them, streamed or not.
func TestUsageEventCarriesCachedTokens(t *testing.T) {
	withCache := strings.Replace(completion, `"total_tokens":17}`, `"total_tokens":17,"prompt_tokens_details":{"cached_tokens":8}}`, 1)
	tests := []struct {
		name   string
		answer string
		want   int
	}{
		{"reported", withCache, 8},
		{"not reported", completion, 0},
		{"more than the prompt", strings.Replace(withCache, `"cached_tokens":8`, `"cached_tokens":99`, 1), 12},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture()
			for _, id := range []string{"i-a1", "i-a2"} {
				f.eng.set("http://"+id+".test/v1", answer{status: 200, body: tc.answer})
			}
			if _, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceChat.AccessName)); err != nil {
				t.Fatal(err)
			}
			evs := f.pub.published()
			if len(evs) != 1 {
				t.Fatalf("published %d events", len(evs))
			}
			if got := evs[0].(events.RequestCompletedV1).CachedTokens; got != tc.want {
				t.Errorf("cached_tokens %d, want %d", got, tc.want)
			}
		})
	}

	t.Run("streamed", func(t *testing.T) {
		usage := `{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}}}`
		f, eng := newScriptFixture(text(sse(chunkRole, chunkText, chunkMore, chunkStop, usage) + "data: [DONE]\n\n"))
		s := openStream(t, f.g, context.Background(), alice, streamBody(aliceChat.AccessName, ""))
		if _, err := drain(t, s); err != io.EOF {
			t.Fatalf("stream ended with %v, want io.EOF", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		want := gateway.Usage{PromptTokens: 12, CompletionTokens: 3}
		want.PromptTokensDetails.CachedTokens = 4
		checkEvents(t, f.pub, instanceOf(eng.requests()[0].endpoint), 200, want)
	})
}
