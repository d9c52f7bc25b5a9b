package transport_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// createWithKey posts a create with an Idempotency-Key and returns the
// response and the service or error it carried.
func (e *env) createWithKey(secret, key, body string) (*http.Response, state.Service, apiError) {
	e.t.Helper()
	req, err := http.NewRequest("POST", e.url+"/api/v1/services", bytes.NewBufferString(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Error(err) // may run in a goroutine
		return &http.Response{}, state.Service{}, apiError{}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var s state.Service
	var ae apiError
	if resp.StatusCode < 300 {
		err = json.Unmarshal(b, &s)
	} else {
		err = json.Unmarshal(b, &ae)
	}
	if err != nil {
		e.t.Errorf("decode %s: %v", b, err)
	}
	return resp, s, ae
}

func (r *recorder) created() []events.ServiceCreatedV1 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []events.ServiceCreatedV1
	for _, ev := range r.events {
		if c, ok := ev.(events.ServiceCreatedV1); ok {
			out = append(out, c)
		}
	}
	return out
}

func (e *env) services(secret string) []state.Service {
	e.t.Helper()
	var list []state.Service
	if resp := e.do(secret, "GET", "/api/v1/services", "", &list); resp.StatusCode != 200 {
		e.t.Fatalf("list: status %d", resp.StatusCode)
	}
	return list
}

const chatBody = `{"name":"chat","base_model":"qwen2.5-7b-instruct"}`

func TestIdempotentCreate(t *testing.T) {
	e := newEnv(t)

	first, s1, _ := e.createWithKey(e.alice, "retry-1", chatBody)
	if first.StatusCode != 201 {
		t.Fatalf("first: status %d", first.StatusCode)
	}
	if got := first.Header.Get("Idempotent-Replayed"); got != "" {
		t.Errorf("first: Idempotent-Replayed = %q, want none", got)
	}
	// The same request, differently spaced, is the same request.
	again, s2, _ := e.createWithKey(e.alice, "retry-1", "{ \"name\": \"chat\",\n  \"base_model\": \"qwen2.5-7b-instruct\" }")
	if again.StatusCode != 201 {
		t.Fatalf("retry: status %d", again.StatusCode)
	}
	if got := again.Header.Get("Idempotent-Replayed"); got != "true" {
		t.Errorf("retry: Idempotent-Replayed = %q, want true", got)
	}
	if s2.ID != s1.ID {
		t.Errorf("retry: service %s, want %s", s2.ID, s1.ID)
	}
	if got := again.Header.Get("Location"); got != "/api/v1/services/"+s1.ID {
		t.Errorf("retry: Location = %q", got)
	}
	if got := len(e.services(e.alice)); got != 1 {
		t.Errorf("services = %d, want 1", got)
	}
	if got := len(e.pub.created()); got != 1 {
		t.Errorf("ServiceCreatedV1 events = %d, want 1", got)
	}

	// The same key with another request is a conflict.
	resp, _, ae := e.createWithKey(e.alice, "retry-1", `{"name":"other","base_model":"qwen2.5-7b-instruct"}`)
	if resp.StatusCode != 409 {
		t.Errorf("different body: status %d, want 409", resp.StatusCode)
	}
	if got := ae.param(); got != "Idempotency-Key" {
		t.Errorf("different body: param = %q, want Idempotency-Key", got)
	}

	// Another owner's key is their own.
	resp, sb, _ := e.createWithKey(e.bob, "retry-1", chatBody)
	if resp.StatusCode != 201 || resp.Header.Get("Idempotent-Replayed") != "" {
		t.Errorf("bob: status %d, replayed %q; want 201, not replayed", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"))
	}
	if sb.ID == s1.ID || sb.OwnerID == s1.OwnerID {
		t.Errorf("bob got alice's service %s", sb.ID)
	}
	if got := len(e.pub.created()); got != 2 {
		t.Errorf("ServiceCreatedV1 events = %d, want 2", got)
	}

	// A key too long is invalid.
	resp, _, ae = e.createWithKey(e.alice, strings.Repeat("k", 256), chatBody)
	if resp.StatusCode != 400 || ae.param() != "Idempotency-Key" {
		t.Errorf("long key: status %d, param %q; want 400 Idempotency-Key", resp.StatusCode, ae.param())
	}
}

// TestIdempotentCreateFailureReleases: a create that fails leaves the key
// free, so the corrected retry creates the service.
func TestIdempotentCreateFailureReleases(t *testing.T) {
	e := newEnv(t)
	e.create(e.alice, "chat") // the name is taken
	resp, _, _ := e.createWithKey(e.alice, "k", chatBody)
	if resp.StatusCode != 409 {
		t.Fatalf("taken name: status %d, want 409", resp.StatusCode)
	}
	list := e.services(e.alice)
	if resp := e.do(e.alice, "DELETE", "/api/v1/services/"+list[0].ID, `{"confirm_name":"chat"}`, nil); resp.StatusCode != 202 {
		t.Fatalf("delete: status %d", resp.StatusCode)
	}
	resp, s, _ := e.createWithKey(e.alice, "k", chatBody)
	if resp.StatusCode != 201 || resp.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("after release: status %d, replayed %q; want 201, not replayed", resp.StatusCode, resp.Header.Get("Idempotent-Replayed"))
	}
	if s.ID == list[0].ID {
		t.Errorf("got the deleted service back")
	}
}

// TestIdempotentCreateConcurrent: concurrent retries make one service, and
// every one of them answers with it.
func TestIdempotentCreateConcurrent(t *testing.T) {
	e := newEnv(t)
	const n = 10
	ids := make([]string, n)
	var replayed int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, s, _ := e.createWithKey(e.alice, "same", chatBody)
			if resp.StatusCode != 201 {
				t.Errorf("request %d: status %d", i, resp.StatusCode)
			}
			mu.Lock()
			defer mu.Unlock()
			ids[i] = s.ID
			if resp.Header.Get("Idempotent-Replayed") == "true" {
				replayed++
			}
		}()
	}
	wg.Wait()
	for i, id := range ids {
		if id != ids[0] {
			t.Errorf("request %d: service %s, want %s", i, id, ids[0])
		}
	}
	if replayed != n-1 {
		t.Errorf("replayed = %d, want %d", replayed, n-1)
	}
	if got := len(e.services(e.alice)); got != 1 {
		t.Errorf("services = %d, want 1", got)
	}
	if got := len(e.pub.created()); got != 1 {
		t.Errorf("ServiceCreatedV1 events = %d, want 1", got)
	}
}
