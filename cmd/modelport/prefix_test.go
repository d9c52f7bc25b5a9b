package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// TestPrefixAffinityEndToEnd: a text service on three simulator
// instances is routed by prefix affinity, as the router reads from the
// services bucket, so every later turn of a conversation finds its
// earlier turns in the instance's prefix cache, reported by the official
// client as usage.prompt_tokens_details.cached_tokens, streamed or not,
// and stored by billing in ClickHouse. Switched to round-robin through
// the control API, turns move on and find nothing.
func TestPrefixAffinityEndToEnd(t *testing.T) {
	chAddr, chDB := chtest.New(t)
	p, err := startPlatform(context.Background(), testEnv(t, chAddr, chDB), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var svc struct {
		service
		RoutingPolicy string `json:"routing_policy"`
	}
	if s := call(t, "POST", p.BaseURL+"/api/v1/services", testAdminKey, map[string]any{"name": "chat", "base_model": "qwen2.5-7b-instruct", "instances": 3}, &svc); s != 201 {
		t.Fatalf("create: status %d", s)
	}
	if svc.RoutingPolicy != "prefix-affinity" {
		t.Fatalf("a text service is routed by %q, want prefix-affinity by default", svc.RoutingPolicy)
	}
	eventually(t, 30*time.Second, "3 instances ready", func() error {
		var got service
		call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID, testAdminKey, nil, &got)
		if got.ReadyInstances != 3 {
			return fmt.Errorf("%d ready", got.ReadyInstances)
		}
		return nil
	})
	client := openai.NewClient(option.WithBaseURL(p.BaseURL+"/v1/"), option.WithAPIKey(testAdminKey), option.WithMaxRetries(0))

	var cachedSum int64
	// converse runs turns of conversation i and returns each turn's
	// prompt and cached tokens; the third turn is streamed.
	converse := func(i, turns int) (prompt, cached []int64) {
		t.Helper()
		msgs := []openai.ChatCompletionMessageParamUnion{openai.SystemMessage(fmt.Sprintf("You are agent %d of a travel agency. ", i) + strings.Repeat("Answer briefly and check every date twice. ", 40))}
		for turn := range turns {
			msgs = append(msgs, openai.UserMessage(fmt.Sprintf("Question %d of traveller %d: which trains go to Lyon?", turn, i)))
			params := openai.ChatCompletionNewParams{Model: svc.AccessName, Messages: msgs, MaxTokens: openai.Int(24)}
			var answer string
			var usage openai.CompletionUsage
			if turn == 2 {
				params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
				stream := client.Chat.Completions.NewStreaming(ctx, params)
				var acc openai.ChatCompletionAccumulator
				for stream.Next() {
					acc.AddChunk(stream.Current())
				}
				if err := stream.Err(); err != nil {
					t.Fatalf("conversation %d, turn %d: %v", i, turn, err)
				}
				answer, usage = acc.Choices[0].Message.Content, acc.Usage
			} else {
				resp, err := client.Chat.Completions.New(ctx, params)
				if err != nil {
					t.Fatalf("conversation %d, turn %d: %v", i, turn, err)
				}
				answer, usage = resp.Choices[0].Message.Content, resp.Usage
			}
			prompt = append(prompt, usage.PromptTokens)
			cached = append(cached, usage.PromptTokensDetails.CachedTokens)
			cachedSum += usage.PromptTokensDetails.CachedTokens
			msgs = append(msgs, openai.AssistantMessage(answer))
		}
		return prompt, cached
	}

	for i := range 6 {
		prompt, cached := converse(i, 4)
		if cached[0] != 0 {
			t.Errorf("conversation %d: its first turn found %d tokens cached", i, cached[0])
		}
		for turn := 1; turn < 4; turn++ {
			// The earlier turns, their answers included, in whole blocks of 16.
			if cached[turn] < prompt[turn-1]-16 || cached[turn] >= prompt[turn] {
				t.Errorf("conversation %d, turn %d: %d of %d prompt tokens cached, want the %d of the turn before: it went to another instance",
					i, turn, cached[turn], prompt[turn], prompt[turn-1])
			}
		}
	}

	// The router follows a change of policy through the services bucket.
	if s := call(t, "PUT", p.BaseURL+"/api/v1/services/"+svc.ID+"/routing", testAdminKey, map[string]any{"policy": "round-robin"}, &svc); s != 200 || svc.RoutingPolicy != "round-robin" {
		t.Fatalf("set round-robin: status %d, policy %q", s, svc.RoutingPolicy)
	}
	n := 100
	eventually(t, 10*time.Second, "round-robin moves a conversation's second turn", func() error {
		n++
		if _, cached := converse(n, 2); cached[1] != 0 {
			return fmt.Errorf("the second turn found %d tokens cached", cached[1])
		}
		return nil
	})

	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	eventually(t, 30*time.Second, "cached tokens in ClickHouse", func() error {
		var stored uint64
		if err := conn.QueryRow(ctx, "SELECT sum(c) FROM (SELECT event_id, any(cached_tokens) AS c FROM "+chDB+".usage_events WHERE service_id = ? GROUP BY event_id)", svc.ID).Scan(&stored); err != nil {
			return err
		}
		if stored != uint64(cachedSum) {
			return fmt.Errorf("ClickHouse holds %d cached tokens, the answers reported %d", stored, cachedSum)
		}
		return nil
	})
}
