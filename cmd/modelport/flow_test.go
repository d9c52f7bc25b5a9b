package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// testAdminKey is the admin key the end-to-end tests configure.
const testAdminKey = "mp-test-admin-key-0123456789abcdef"

// endpoints are where the flow finds each API; in the all-in-one binary
// they are one address.
type endpoints struct {
	control string // deployer: /api/v1/services
	router  string // router: /v1
	usage   string // billing: /api/v1/usage
}

type service struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	AccessName     string    `json:"access_name"`
	BaseModel      string    `json:"base_model"`
	Task           string    `json:"task"`
	Engine         string    `json:"engine"`
	Instances      int       `json:"instances"`
	ReadyInstances int       `json:"ready_instances"`
	Status         string    `json:"status"`
	BillingMethod  string    `json:"billing_method"`
	CreatedAt      time.Time `json:"created_at"`
}

type usageTotals struct {
	ServiceID        string `json:"service_id"`
	Requests         uint64 `json:"requests"`
	PromptTokens     uint64 `json:"prompt_tokens"`
	CompletionTokens uint64 `json:"completion_tokens"`
	TotalTokens      uint64 `json:"total_tokens"`
}

// call sends a JSON request with the admin key and decodes a JSON answer
// into out, returning the status.
func call(t *testing.T, method, url, key string, body, out any) int {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: status %d, body %s: %v", method, url, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

// eventually polls check until it returns nil or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runFlow is the walking skeleton's flow: deploy a service, wait for it to
// run, call it with the official OpenAI Go client, and check that billing
// (through its API and in ClickHouse itself) has exactly the usage the
// client was told.
func runFlow(t *testing.T, ep endpoints, chAddr, chDB string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The catalog lists what can be deployed.
	var models []struct {
		Name   string   `json:"name"`
		Tasks  []string `json:"tasks"`
		Engine string   `json:"engine"`
	}
	if s := call(t, "GET", ep.control+"/api/v1/catalog", testAdminKey, nil, &models); s != 200 || len(models) == 0 || models[0].Name == "" || len(models[0].Tasks) == 0 || models[0].Engine == "" {
		t.Fatalf("catalog: status %d, %+v", s, models)
	}

	// 1-2. Create a service through the control API.
	var svc service
	status := call(t, "POST", ep.control+"/api/v1/services", testAdminKey, map[string]any{
		"name": "test", "base_model": "qwen2.5-7b-instruct", "task": "text-generation",
		"instances": 2, "billing_method": "per-token",
	}, &svc)
	if status != http.StatusCreated {
		t.Fatalf("create service: status %d, want 201 (%+v)", status, svc)
	}
	if svc.Status != "pending" || svc.Instances != 2 || svc.BillingMethod != "per-token" || svc.Name != "test" {
		t.Errorf("created service = %+v", svc)
	}
	if !strings.HasPrefix(svc.AccessName, "u-") || !strings.HasSuffix(svc.AccessName, "/test") {
		t.Errorf("access name %q, want u-<owner>/test", svc.AccessName)
	}

	// The same name again is a conflict, and a bad request changes nothing.
	var errBody struct {
		Error struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
		} `json:"error"`
	}
	if got := call(t, "POST", ep.control+"/api/v1/services", testAdminKey, map[string]any{"name": "test", "base_model": "qwen2.5-7b-instruct"}, &errBody); got != http.StatusConflict {
		t.Errorf("duplicate name: status %d, want 409", got)
	}
	if got := call(t, "POST", ep.control+"/api/v1/services", testAdminKey, map[string]any{"name": "Bad Name", "base_model": "qwen2.5-7b-instruct"}, &errBody); got != http.StatusBadRequest || errBody.Error.Param == nil || *errBody.Error.Param != "name" {
		t.Errorf("bad name: status %d, error %+v; want 400 with param name", got, errBody.Error)
	}

	// 3-4. The scaler places two instances and the worker starts them.
	var list []service
	if s := call(t, "GET", ep.control+"/api/v1/services", testAdminKey, nil, &list); s != 200 || len(list) != 1 || list[0].ID != svc.ID {
		t.Errorf("service list: status %d, %+v", s, list)
	}
	eventually(t, 30*time.Second, "service running", func() error {
		var got service
		if s := call(t, "GET", ep.control+"/api/v1/services/"+svc.ID, testAdminKey, nil, &got); s != 200 {
			return fmt.Errorf("status %d", s)
		}
		if got.Status != "running" || got.ReadyInstances != 2 {
			return fmt.Errorf("status %s, ready %d/%d", got.Status, got.ReadyInstances, got.Instances)
		}
		if got.Engine != "simulator" {
			return fmt.Errorf("engine %q, want simulator (no GPU here)", got.Engine)
		}
		return nil
	})
	var insts []struct {
		ID       string `json:"id"`
		WorkerID string `json:"worker_id"`
		Engine   string `json:"engine"`
		Endpoint string `json:"endpoint"`
		Status   string `json:"status"`
	}
	if s := call(t, "GET", ep.control+"/api/v1/services/"+svc.ID+"/instances", testAdminKey, nil, &insts); s != 200 || len(insts) != 2 {
		t.Fatalf("instances: status %d, %+v", s, insts)
	}
	for _, in := range insts {
		if in.Status != "ready" || in.Engine != "simulator" || in.ID == "" || in.WorkerID == "" || !strings.HasPrefix(in.Endpoint, "http://") || !strings.HasSuffix(in.Endpoint, "/v1") {
			t.Errorf("instance %+v", in)
		}
	}

	// 5. Call it through the router with the official client.
	client := openai.NewClient(option.WithBaseURL(ep.router+"/v1/"), option.WithAPIKey(testAdminKey), option.WithMaxRetries(0))
	prompts := []string{"Say this is a test!", "hello!", "How many tokens does this prompt have, roughly?", "", "Write a haiku about queues."}
	var want usageTotals
	for i, p := range prompts {
		resp, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: svc.AccessName,
			Messages: []openai.ChatCompletionMessageParamUnion{
				openai.SystemMessage("You are terse."),
				openai.UserMessage(p),
			},
			Temperature: openai.Float(0.7),
			MaxTokens:   openai.Int(int64(20 + 10*i)),
		})
		if err != nil {
			t.Fatalf("chat completion %d: %v", i, err)
		}
		if !strings.HasPrefix(resp.ID, "cmp-") || resp.Object != "chat.completion" || resp.Model != svc.AccessName || resp.Created == 0 {
			t.Errorf("response %d: id %q object %q model %q created %d", i, resp.ID, resp.Object, resp.Model, resp.Created)
		}
		if len(resp.Choices) != 1 || resp.Choices[0].Message.Role != "assistant" || !strings.Contains(resp.Choices[0].Message.Content, "simulat") {
			t.Fatalf("response %d choices: %+v", i, resp.Choices)
		}
		u := resp.Usage
		if u.PromptTokens <= 0 || u.CompletionTokens <= 0 || u.TotalTokens != u.PromptTokens+u.CompletionTokens || u.CompletionTokens > int64(20+10*i) {
			t.Errorf("response %d usage %+v (max_tokens %d)", i, u, 20+10*i)
		}
		want.Requests++
		want.PromptTokens += uint64(u.PromptTokens)
		want.CompletionTokens += uint64(u.CompletionTokens)
		want.TotalTokens += uint64(u.TotalTokens)
	}
	want.ServiceID = svc.ID

	// Errors reach the client as OpenAI errors and are not billed.
	badKey := openai.NewClient(option.WithBaseURL(ep.router+"/v1/"), option.WithAPIKey("mp-not-a-real-key-000000000000"), option.WithMaxRetries(0))
	_, err := badKey.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: svc.AccessName, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusUnauthorized {
		t.Errorf("bad key: %v, want a 401 API error", err)
	}
	_, err = client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "u-nobody/missing", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}})
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound || apiErr.Param != "model" {
		t.Errorf("unknown model: %v, want a 404 API error on param model", err)
	}

	// 6-7. Billing has exactly what the client was told.
	eventually(t, 30*time.Second, "usage billed", func() error {
		var got usageTotals
		if s := call(t, "GET", ep.usage+"/api/v1/usage?service_id="+svc.ID, testAdminKey, nil, &got); s != 200 {
			return fmt.Errorf("status %d", s)
		}
		if got != want {
			return fmt.Errorf("usage API = %+v, want %+v", got, want)
		}
		return nil
	})
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var rows, prompt, completion, total uint64
	if err := conn.QueryRow(ctx, "SELECT uniqExact(event_id), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens) FROM "+chDB+".usage_events WHERE service_id = ?", svc.ID).
		Scan(&rows, &prompt, &completion, &total); err != nil {
		t.Fatalf("query ClickHouse: %v", err)
	}
	if got := (usageTotals{ServiceID: svc.ID, Requests: rows, PromptTokens: prompt, CompletionTokens: completion, TotalTokens: total}); got != want {
		t.Errorf("ClickHouse usage_events = %+v, want %+v", got, want)
	}
}
