package transport_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/gguftest"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/modelport/modelport/services/deployer/internal/kvstore"
	"github.com/modelport/modelport/services/deployer/internal/models"
	"github.com/modelport/modelport/services/deployer/internal/modelstore"
	"github.com/modelport/modelport/services/deployer/internal/transport"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// testEventsURL is where newEnv's control API says the event stream is.
const testEventsURL = "nats://events.example.com:4222"

// recorder keeps published events in the order they were published.
type recorder struct {
	mu     sync.Mutex
	events []events.Event
}

func (r *recorder) Publish(_ context.Context, ev events.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	return nil
}

// scaled returns the ServiceScaledV1 events in the order they were first
// published, each event ID once, as JetStream stores them (the message ID
// is the event ID): an announcement published again by another request
// is the same event.
func (r *recorder) scaled() []events.ServiceScaledV1 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []events.ServiceScaledV1
	seen := map[string]bool{}
	for _, ev := range r.events {
		if s, ok := ev.(events.ServiceScaledV1); ok && !seen[s.ID] {
			seen[s.ID] = true
			out = append(out, s)
		}
	}
	return out
}

type env struct {
	t   *testing.T
	url string
	// models is the model store's folder; tiny.gguf is in it.
	models string
	bus    *natsx.Bus
	m      *deploy.Manager
	pub    *recorder
	alice  string // secrets
	bob    string
	admin  string
}

// newEnv serves the control API over real JetStream buckets, with users
// alice and bob.
func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// The deployer's parts run as its NATS identity; the test plays the
	// other services as the test admin (e.bus).
	ns := natstest.New(t)
	bus := ns.Bus(t, access.Deployer)
	keys := auth.NewKeyring(bus.KV(state.BucketAPIKeys))
	e := &env{t: t, bus: ns.Bus(t, natstest.Admin), pub: &recorder{}}
	for _, secret := range []*string{&e.alice, &e.bob, &e.admin} {
		*secret = auth.NewSecret()
		if err := keys.Put(ctx, auth.NewKey(*secret, auth.NewOwnerID(), secret == &e.admin)); err != nil {
			t.Fatal(err)
		}
	}
	store := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketNames), bus.KV(state.BucketInstances), bus.KV(state.BucketPlacements))
	e.models = t.TempDir()
	if err := gguftest.Write(filepath.Join(e.models, "tiny.gguf"), gguftest.Tiny()); err != nil {
		t.Fatal(err)
	}
	files, err := modelstore.New([]string{e.models})
	if err != nil {
		t.Fatal(err)
	}
	reg := models.NewRegistry(kvstore.NewModels(bus.KV(state.BucketModels)), catalog.Default(), files, store)
	e.m = deploy.NewManager(store, catalog.Default(), e.pub, deploy.WithModels(reg))
	srv := httptest.NewServer(transport.NewHandler(e.m, deploy.NewIdempotent(e.m, kvstore.NewClaims(bus.KV(state.BucketIdempotency))), deploy.NewKeys(keys, e.m), keys, quiet,
		transport.WithOwners(deploy.NewOwners(kvstore.NewOwners(bus.KV(state.BucketOwners)), keys)),
		transport.WithLive(transport.NewLive(e.m, bus.KV(state.BucketServices), bus.JS, ctx.Done(), quiet)),
		transport.WithEventStream(transport.EventStream{NATSURL: testEventsURL}),
		transport.WithModels(reg)))
	t.Cleanup(srv.Close)
	e.url = srv.URL
	return e
}

// do sends a request and decodes a JSON answer into out, if given.
func (e *env) do(secret, method, path, body string, out any) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, bytes.NewBufferString(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
	return resp
}

type apiError struct {
	Error struct {
		Param *string `json:"param"`
		Code  *string `json:"code"`
	} `json:"error"`
}

func (a apiError) param() string {
	if a.Error.Param == nil {
		return ""
	}
	return *a.Error.Param
}

func (e *env) create(secret, name string) state.Service {
	e.t.Helper()
	var s state.Service
	if resp := e.do(secret, "POST", "/api/v1/services", `{"name":"`+name+`","base_model":"qwen2.5-7b-instruct"}`, &s); resp.StatusCode != 201 {
		e.t.Fatalf("create %s: status %d", name, resp.StatusCode)
	}
	return s
}

func TestScaleHTTP(t *testing.T) {
	e := newEnv(t)
	s := e.create(e.alice, "chat")
	tests := []struct {
		name       string
		secret     string
		id         string
		body       string
		wantStatus int
		wantParam  string
		wantInst   int
	}{
		{name: "up", secret: e.alice, id: s.ID, body: `{"instances":3}`, wantStatus: 200, wantInst: 3},
		{name: "down", secret: e.alice, id: s.ID, body: `{"instances":2}`, wantStatus: 200, wantInst: 2},
		{name: "to zero", secret: e.alice, id: s.ID, body: `{"instances":0}`, wantStatus: 200, wantInst: 0},
		{name: "missing", secret: e.alice, id: s.ID, body: `{}`, wantStatus: 400, wantParam: "instances"},
		{name: "too many", secret: e.alice, id: s.ID, body: `{"instances":65}`, wantStatus: 400, wantParam: "instances"},
		{name: "not a number", secret: e.alice, id: s.ID, body: `{"instances":"two"}`, wantStatus: 400, wantParam: "instances"},
		{name: "another owner", secret: e.bob, id: s.ID, body: `{"instances":1}`, wantStatus: 404},
		{name: "unknown", secret: e.alice, id: "nope", body: `{"instances":1}`, wantStatus: 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got struct {
				state.Service
				apiError
			}
			resp := e.do(tc.secret, "POST", "/api/v1/services/"+tc.id+"/scale", tc.body, &got)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if got, want := got.param(), tc.wantParam; got != want {
				t.Errorf("param = %q, want %q", got, want)
			}
			if tc.wantStatus == 200 && got.Instances != tc.wantInst {
				t.Errorf("instances = %d, want %d", got.Instances, tc.wantInst)
			}
		})
	}

	// Deleting, then scaling, is a conflict.
	if resp := e.do(e.alice, "DELETE", "/api/v1/services/"+s.ID, `{"confirm_name":"chat"}`, nil); resp.StatusCode != 202 {
		t.Fatalf("delete: status %d", resp.StatusCode)
	}
	if resp := e.do(e.alice, "POST", "/api/v1/services/"+s.ID+"/scale", `{"instances":1}`, nil); resp.StatusCode != 409 {
		t.Errorf("scale after delete: status %d, want 409", resp.StatusCode)
	}
}

// TestConcurrentScale: concurrent requests all land, the record ends with
// the last one stored, and the events chain From to the previous To.
func TestConcurrentScale(t *testing.T) {
	e := newEnv(t)
	s := e.create(e.alice, "chat")
	var wg sync.WaitGroup
	for n := 1; n <= 10; n++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp := e.do(e.alice, "POST", "/api/v1/services/"+s.ID+"/scale", fmt.Sprintf(`{"instances":%d}`, n+1), nil); resp.StatusCode != 200 {
				t.Errorf("scale to %d: status %d", n+1, resp.StatusCode)
			}
		}()
	}
	// Instance events racing the scale requests exercise the revision check.
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.m.RefreshReady(context.Background(), s.ID); err != nil {
				t.Errorf("RefreshReady: %v", err)
			}
		}()
	}
	wg.Wait()

	evs := e.pub.scaled()
	if len(evs) == 0 {
		t.Fatal("no ServiceScaledV1 published")
	}
	prev := 1 // created with one instance
	for i, ev := range evs {
		if ev.From != prev {
			t.Errorf("event %d: from %d, want the previous to, %d", i, ev.From, prev)
		}
		prev = ev.To
	}
	var got state.Service
	e.do(e.alice, "GET", "/api/v1/services/"+s.ID, "", &got)
	if got, want := got.Instances, prev; got != want {
		t.Errorf("stored instances = %d, want the last event's %d", got, want)
	}
}

func TestDeleteHTTP(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s := e.create(e.alice, "chat")
	// One instance runs, so the deletion waits for it.
	if err := state.Put(ctx, e.bus.KV(state.BucketInstances), state.InstanceKey(s.ID, "i1"),
		state.Instance{ID: "i1", ServiceID: s.ID, Status: state.InstanceReady, Engine: "vllm"}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		secret     string
		body       string
		wantStatus int
		wantParam  string
	}{
		{name: "no body", secret: e.alice, wantStatus: 400, wantParam: "confirm_name"},
		{name: "empty object", secret: e.alice, body: `{}`, wantStatus: 400, wantParam: "confirm_name"},
		{name: "wrong name", secret: e.alice, body: `{"confirm_name":"chat2"}`, wantStatus: 400, wantParam: "confirm_name"},
		{name: "another owner", secret: e.bob, body: `{"confirm_name":"chat"}`, wantStatus: 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got apiError
			if resp := e.do(tc.secret, "DELETE", "/api/v1/services/"+s.ID, tc.body, &got); resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if got, want := got.param(), tc.wantParam; got != want {
				t.Errorf("param = %q, want %q", got, want)
			}
		})
	}
	if got := e.pub.events; len(got) != 1 { // the creation only
		t.Fatalf("events after refused deletions = %d, want 1", len(got))
	}

	var got state.Service
	if resp := e.do(e.alice, "DELETE", "/api/v1/services/"+s.ID, `{"confirm_name":"chat"}`, &got); resp.StatusCode != 202 {
		t.Fatalf("delete: status %d", resp.StatusCode)
	}
	if got.Status != state.StatusDeleting {
		t.Errorf("status = %q, want deleting", got.Status)
	}
	if _, ok := e.pub.events[len(e.pub.events)-1].(events.ServiceDeletedV1); !ok {
		t.Errorf("last event %T, want ServiceDeletedV1", e.pub.events[len(e.pub.events)-1])
	}
	// The name is still taken while the instance runs.
	if resp := e.do(e.alice, "POST", "/api/v1/services", `{"name":"chat","base_model":"qwen2.5-7b-instruct"}`, nil); resp.StatusCode != 409 {
		t.Errorf("create while deleting: status %d, want 409", resp.StatusCode)
	}

	// The worker removes the instance and reports it stopped.
	if err := e.bus.KV(state.BucketInstances).Delete(ctx, state.InstanceKey(s.ID, "i1")); err != nil {
		t.Fatal(err)
	}
	if err := e.m.RefreshReady(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	e.do(e.alice, "GET", "/api/v1/services/"+s.ID, "", &got)
	if got.Status != state.StatusDeleted || !got.UpdatedAt.After(s.CreatedAt) {
		t.Errorf("after the last instance: %+v, want deleted with the deletion time", got)
	}

	// The list hides it unless asked; the name is free again.
	var list []state.Service
	e.do(e.alice, "GET", "/api/v1/services", "", &list)
	if len(list) != 0 {
		t.Errorf("list = %+v, want empty", list)
	}
	e.do(e.alice, "GET", "/api/v1/services?status=deleted", "", &list)
	if len(list) != 1 || list[0].ID != s.ID {
		t.Errorf("list of deleted = %+v, want the deleted service", list)
	}
	again := e.create(e.alice, "chat")
	if again.ID == s.ID || again.AccessName != s.AccessName {
		t.Errorf("recreated %+v, want a new service with the same access name", again)
	}
	// A late event for the old service leaves the new one's name alone.
	if err := e.m.RefreshReady(ctx, s.ID); err != nil {
		t.Fatal(err)
	}
	if resp := e.do(e.alice, "POST", "/api/v1/services", `{"name":"chat","base_model":"qwen2.5-7b-instruct"}`, nil); resp.StatusCode != 409 {
		t.Errorf("third create of the name: status %d, want 409", resp.StatusCode)
	}
}

func TestListHTTP(t *testing.T) {
	e := newEnv(t)
	var ids []string
	for i := range 5 {
		ids = append(ids, e.create(e.alice, fmt.Sprintf("s%d", i)).ID)
	}
	e.create(e.bob, "other")

	var page []state.Service
	resp := e.do(e.alice, "GET", "/api/v1/services?limit=2", "", &page)
	if resp.StatusCode != 200 || len(page) != 2 || page[0].ID != ids[0] || page[1].ID != ids[1] {
		t.Fatalf("first page: status %d, %+v", resp.StatusCode, page)
	}
	if got, want := resp.Header.Get("Link"), `</api/v1/services?after=`+ids[1]+`&limit=2>; rel="next"`; got != want {
		t.Errorf("Link = %s, want %s", got, want)
	}
	var seen []string
	next := "/api/v1/services?limit=2"
	for next != "" {
		resp := e.do(e.alice, "GET", next, "", &page)
		for _, s := range page {
			seen = append(seen, s.ID)
		}
		next = ""
		if l := resp.Header.Get("Link"); l != "" {
			next = l[1:bytes.IndexByte([]byte(l), '>')]
		}
	}
	if fmt.Sprint(seen) != fmt.Sprint(ids) {
		t.Errorf("following Link = %v, want %v", seen, ids)
	}

	tests := []struct {
		query      string
		wantStatus int
		wantParam  string
		wantLen    int
	}{
		{query: "?task=text-generation", wantStatus: 200, wantLen: 5},
		{query: "?task=image-generation", wantStatus: 200, wantLen: 0},
		{query: "?status=pending", wantStatus: 200, wantLen: 5},
		{query: "?status=running", wantStatus: 200, wantLen: 0},
		{query: "?status=asleep", wantStatus: 400, wantParam: "status"},
		{query: "?limit=0", wantStatus: 400, wantParam: "limit"},
		{query: "?limit=501", wantStatus: 400, wantParam: "limit"},
		{query: "?limit=x", wantStatus: 400, wantParam: "limit"},
		{query: "?after=nope", wantStatus: 400, wantParam: "after"},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			var raw json.RawMessage
			resp := e.do(e.alice, "GET", "/api/v1/services"+tc.query, "", &raw)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d (%s)", resp.StatusCode, tc.wantStatus, raw)
			}
			if tc.wantStatus != 200 {
				var ae apiError
				_ = json.Unmarshal(raw, &ae)
				if got, want := ae.param(), tc.wantParam; got != want {
					t.Errorf("param = %q, want %q", got, want)
				}
				return
			}
			var list []state.Service
			if err := json.Unmarshal(raw, &list); err != nil || list == nil {
				t.Fatalf("body %s is not a JSON array", raw)
			}
			if got, want := len(list), tc.wantLen; got != want {
				t.Errorf("len = %d, want %d", got, want)
			}
		})
	}
}

func TestKeysHTTP(t *testing.T) {
	e := newEnv(t)
	chat := e.create(e.alice, "chat")
	bobs := e.create(e.bob, "other")

	type key struct {
		ID        string   `json:"id"`
		Name      string   `json:"name"`
		Prefix    string   `json:"prefix"`
		Key       string   `json:"key"`
		Services  []string `json:"services"`
		CreatedAt string   `json:"created_at"`
	}
	var ci key
	resp := e.do(e.alice, "POST", "/api/v1/keys", `{"name":"ci","services":["`+chat.ID+`"]}`, &ci)
	if resp.StatusCode != 201 {
		t.Fatalf("create key: status %d", resp.StatusCode)
	}
	if ci.ID == "" || ci.Name != "ci" || len(ci.Key) < 40 || ci.Key[:len(ci.Prefix)] != ci.Prefix || fmt.Sprint(ci.Services) != "["+chat.ID+"]" || ci.CreatedAt == "" {
		t.Errorf("created key %+v", ci)
	}

	refused := []struct {
		name       string
		secret     string
		body       string
		wantStatus int
		wantParam  string
	}{
		{name: "another owner's service", secret: e.alice, body: `{"name":"x","services":["` + bobs.ID + `"]}`, wantStatus: 404, wantParam: "services"},
		{name: "unknown service", secret: e.alice, body: `{"name":"x","services":["nope"]}`, wantStatus: 404, wantParam: "services"},
		{name: "no name", secret: e.alice, body: `{}`, wantStatus: 400, wantParam: "name"},
		{name: "a restricted key", secret: ci.Key, body: `{"name":"escalate"}`, wantStatus: 403},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			var ae apiError
			if resp := e.do(tc.secret, "POST", "/api/v1/keys", tc.body, &ae); resp.StatusCode != tc.wantStatus {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if got, want := ae.param(), tc.wantParam; got != want {
				t.Errorf("param = %q, want %q", got, want)
			}
		})
	}

	// The new key works; the list shows alice's two keys, no secrets.
	if resp := e.do(ci.Key, "GET", "/api/v1/services/"+chat.ID, "", nil); resp.StatusCode != 200 {
		t.Errorf("the new key: status %d", resp.StatusCode)
	}
	var list []map[string]any
	e.do(e.alice, "GET", "/api/v1/keys", "", &list)
	if len(list) != 2 {
		t.Fatalf("alice's keys = %+v, want 2", list)
	}
	for _, k := range list {
		if _, ok := k["key"]; ok {
			t.Errorf("listed key %+v shows a secret", k)
		}
	}
	e.do(e.bob, "GET", "/api/v1/keys", "", &list)
	if len(list) != 1 {
		t.Errorf("bob's keys = %+v, want his one", list)
	}

	// Bob cannot revoke alice's key; alice can.
	if resp := e.do(e.bob, "DELETE", "/api/v1/keys/"+ci.ID, "", nil); resp.StatusCode != 404 {
		t.Errorf("bob revoking alice's key: status %d, want 404", resp.StatusCode)
	}
	if resp := e.do(e.alice, "DELETE", "/api/v1/keys/"+ci.ID, "", nil); resp.StatusCode != 204 {
		t.Errorf("revoke: status %d, want 204", resp.StatusCode)
	}
	if resp := e.do(ci.Key, "GET", "/api/v1/services/"+chat.ID, "", nil); resp.StatusCode != 401 {
		t.Errorf("revoked key: status %d, want 401", resp.StatusCode)
	}
	if resp := e.do(e.alice, "DELETE", "/api/v1/keys/"+ci.ID, "", nil); resp.StatusCode != 404 {
		t.Errorf("revoke again: status %d, want 404", resp.StatusCode)
	}
}
