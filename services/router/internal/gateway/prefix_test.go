package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
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

// A service routed by prefix-affinity keeps the retry rules: a request
// that never reached its home is tried on the other instance, and the next
// turn goes home again unless the home was at fault (then it is out of
// rotation for a while); one that reached its home is not sent again.
func TestPrefixAffinityRetriesOnlyWhatNeverStarted(t *testing.T) {
	failure := func(kind errs.Kind, sent, faulty bool) answer {
		return answer{err: &gateway.EngineError{Sent: sent, Faulty: faulty, Err: errs.E(kind, "engine trouble")}}
	}
	tests := []struct {
		name      string
		first     answer
		wantCalls int
		wantKind  errs.Kind // 0: answered
		wantHome  bool      // the next turn goes home
	}{
		{name: "never reached, home at fault", first: failure(errs.Unavailable, false, true), wantCalls: 2},
		{name: "never reached, stale connection", first: failure(errs.Unavailable, false, false), wantCalls: 2, wantHome: true},
		{name: "the engine's own 503", first: answer{status: 503, body: `{"error":{"message":"loading the model","type":"unavailable_error"}}`}, wantCalls: 2},
		{name: "reached, then reset", first: failure(errs.Upstream, true, true), wantCalls: 1, wantKind: errs.Upstream},
		{name: "reached on a reused connection, then reset", first: failure(errs.Upstream, true, false), wantCalls: 1, wantKind: errs.Upstream, wantHome: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture()
			svc := aliceChat
			svc.RoutingPolicy = state.RoutingPrefixAffinity
			f.table.PutService(svc)
			if _, err := complete(f.g, context.Background(), alice, "req-0", turnBody(svc.AccessName, 7, 0)); err != nil {
				t.Fatal(err)
			}
			home := f.eng.endpoints()[0]

			f.eng.set(home, tc.first)
			_, err := complete(f.g, context.Background(), alice, "req-1", turnBody(svc.AccessName, 7, 1))
			if tc.wantKind == 0 && err != nil || tc.wantKind != 0 && errs.KindOf(err) != tc.wantKind {
				t.Errorf("err %v, want kind %v", err, tc.wantKind)
			}
			calls := f.eng.endpoints()[1:]
			if len(calls) != tc.wantCalls {
				t.Fatalf("engine called %d times (%v), want %d", len(calls), calls, tc.wantCalls)
			}
			if calls[0] != home || len(calls) == 2 && calls[1] == home {
				t.Errorf("tried %v; want home %s first, then the other instance", calls, home)
			}

			f.eng.set(home, answer{status: 200, body: completion})
			if _, err := complete(f.g, context.Background(), alice, "req-2", turnBody(svc.AccessName, 7, 2)); err != nil {
				t.Fatal(err)
			}
			eps := f.eng.endpoints()
			if got := eps[len(eps)-1] == home; got != tc.wantHome {
				t.Errorf("next turn went home: %v, want %v", got, tc.wantHome)
			}
		})
	}
}

// Cached prompt tokens survive every way a stream ends: the usage the
// engine reported last is metered with the status of the ending, and the
// usage chunk a client that asked for usage gets before the error event
// says them too. Where the engine reported no usage, the chunk claims no
// cached tokens.
func TestCachedTokensOnEveryStreamExit(t *testing.T) {
	withCache := func(chunk, total string) string {
		return strings.Replace(chunk, `"total_tokens":`+total+`}`, `"total_tokens":`+total+`,"prompt_tokens_details":{"cached_tokens":8}}`, 1)
	}
	sent := sse(withCache(chunkRole, "12"), withCache(chunkText, "13"))
	want := gateway.Usage{PromptTokens: 12, CompletionTokens: 1}
	want.PromptTokensDetails.CachedTokens = 8
	tests := []struct {
		name       string
		body       bodyFunc
		idle       time.Duration
		clientGone bool
		wantStatus int
	}{
		{name: "engine ends without [DONE]", body: text(sent), wantStatus: 502},
		{name: "engine connection breaks", body: failAfter(sent, errors.New("connection reset by peer")), wantStatus: 502},
		{name: "engine goes silent", body: hangAfter(sent), idle: 50 * time.Millisecond, wantStatus: 504},
		{name: "client goes away", body: hangAfter(sent), clientGone: true, wantStatus: 499},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, eng := newScriptFixture(tc.body)
			f.g.IdleTimeout = tc.idle
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s := openStream(t, f.g, ctx, alice, streamBody(aliceChat.AccessName, `,"stream_options":{"include_usage":true}`))
			for i := range 2 {
				if _, err := s.Next(); err != nil {
					t.Fatalf("chunk %d: %v", i, err)
				}
			}
			if tc.clientGone {
				cancel()
			}
			if _, err := s.Next(); err == nil || err == io.EOF {
				t.Fatalf("stream went on (%v), want it cut short", err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			checkEvents(t, f.pub, instanceOf(eng.requests()[0].endpoint), tc.wantStatus, want)
			var chunk struct {
				Usage gateway.Usage `json:"usage"`
			}
			if err := json.Unmarshal(s.UsageChunk(), &chunk); err != nil || chunk.Usage.PromptTokensDetails.CachedTokens != 8 {
				t.Errorf("usage chunk %s (%v); want 8 cached tokens", s.UsageChunk(), err)
			}
		})
	}

	t.Run("engine reports more cached than the prompt", func(t *testing.T) {
		f, eng := newScriptFixture(text(sse(strings.Replace(chunkRole, `"total_tokens":12}`, `"total_tokens":12,"prompt_tokens_details":{"cached_tokens":99}}`, 1))))
		s := openStream(t, f.g, context.Background(), alice, streamBody(aliceChat.AccessName, `,"stream_options":{"include_usage":true}`))
		if _, err := drain(t, s); err == nil || err == io.EOF {
			t.Fatalf("stream ended with %v, want it cut short", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		want := gateway.Usage{PromptTokens: 12}
		want.PromptTokensDetails.CachedTokens = 12
		checkEvents(t, f.pub, instanceOf(eng.requests()[0].endpoint), 502, want)
		if c := s.UsageChunk(); !strings.Contains(string(c), `"prompt_tokens_details":{"cached_tokens":12}`) {
			t.Errorf("usage chunk %s; want the 12 cached tokens billed", c)
		}
	})

	t.Run("engine reports no usage", func(t *testing.T) {
		noUsage := `{"id":"e","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}`
		f, _ := newScriptFixture(text(sse(noUsage)))
		s := openStream(t, f.g, context.Background(), alice, streamBody(aliceChat.AccessName, `,"stream_options":{"include_usage":true}`))
		if _, err := drain(t, s); err == nil || err == io.EOF {
			t.Fatalf("stream ended with %v, want it cut short", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if c := s.UsageChunk(); !strings.Contains(string(c), `"prompt_tokens"`) || strings.Contains(string(c), "cached_tokens") {
			t.Errorf("usage chunk %s; want the counted tokens and no cached tokens", c)
		}
	})
}
