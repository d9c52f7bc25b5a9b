package main

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/state"
)

// TestDeletion deletes a running service through the control API: a wrong
// confirmation changes nothing; the right one makes the router answer 404
// at once, the instances drain and stop, the service ends deleted, nothing
// more is billed, and the name can be used again.
func TestDeletion(t *testing.T) {
	chAddr, chDB := chtest.New(t)
	p, err := startPlatform(context.Background(), testEnv(t, chAddr, chDB), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })

	svc := deployRunning(t, p.BaseURL, "doomed", "qwen2.5-7b-instruct", "text-generation")
	first := chatUntilOK(t, p.BaseURL, svc.AccessName)
	chat := func() int {
		return call(t, "POST", p.BaseURL+"/v1/chat/completions", testAdminKey, map[string]any{
			"model": svc.AccessName, "messages": []map[string]string{{"role": "user", "content": "still there?"}},
		}, nil)
	}

	var got service
	if s := call(t, "DELETE", p.BaseURL+"/api/v1/services/"+svc.ID, testAdminKey, map[string]any{"confirm_name": "not-the-name"}, &got); s != http.StatusBadRequest {
		t.Fatalf("delete with the wrong name: status %d, want 400", s)
	}
	second := chatUntilOK(t, p.BaseURL, svc.AccessName) // still served
	want := usageTotals{ServiceID: svc.ID, Requests: 2, PromptTokens: first.PromptTokens + second.PromptTokens,
		CompletionTokens: first.CompletionTokens + second.CompletionTokens, TotalTokens: first.TotalTokens + second.TotalTokens}

	if s := call(t, "DELETE", p.BaseURL+"/api/v1/services/"+svc.ID, testAdminKey, map[string]any{"confirm_name": "doomed"}, &got); s != http.StatusAccepted {
		t.Fatalf("delete: status %d, want 202", s)
	}
	eventually(t, 5*time.Second, "router stops routing", func() error {
		if s := chat(); s != http.StatusNotFound {
			return fmt.Errorf("chat status %d, want 404", s)
		}
		return nil
	})
	eventually(t, 30*time.Second, "service deleted", func() error {
		var s service
		call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID, testAdminKey, nil, &s)
		var insts []state.Instance
		call(t, "GET", p.BaseURL+"/api/v1/services/"+svc.ID+"/instances", testAdminKey, nil, &insts)
		if s.Status != state.StatusDeleted || len(insts) != 0 {
			return fmt.Errorf("status %s with %d instances", s.Status, len(insts))
		}
		return nil
	})
	var list []service
	call(t, "GET", p.BaseURL+"/api/v1/services", testAdminKey, nil, &list)
	for _, s := range list {
		if s.ID == svc.ID {
			t.Errorf("deleted service still listed: %+v", s)
		}
	}

	// Billing has the two answered requests and nothing of those refused
	// after the deletion.
	eventually(t, 30*time.Second, "usage of the answered requests only", func() error {
		var u usageTotals
		call(t, "GET", p.BaseURL+"/api/v1/usage?service_id="+svc.ID, testAdminKey, nil, &u)
		if u != want {
			return fmt.Errorf("usage %+v, want %+v", u, want)
		}
		return nil
	})

	again := deployRunning(t, p.BaseURL, "doomed", "qwen2.5-7b-instruct", "text-generation")
	if again.ID == svc.ID || again.AccessName != svc.AccessName {
		t.Errorf("re-created service %+v", again)
	}
	chatUntilOK(t, p.BaseURL, again.AccessName)
}
