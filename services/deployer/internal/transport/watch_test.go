package transport_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/modelport/modelport/services/deployer/internal/kvstore"
	"github.com/modelport/modelport/services/deployer/internal/transport"
)

// liveEnv serves the control API with its live views over real JetStream:
// events are published to the real streams, so the events endpoint reads
// what the deployer announced.
type liveEnv struct {
	*env
	admin string
	live  *transport.Live
	done  chan struct{}
}

func newLiveEnv(t *testing.T) *liveEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// The deployer's parts run as its NATS identity; the test plays the
	// other services as the test admin (e.bus).
	ns := natstest.New(t)
	bus := ns.Bus(t, access.Deployer)
	keys := auth.NewKeyring(bus.KV(state.BucketAPIKeys))
	e := &liveEnv{env: &env{t: t, bus: ns.Bus(t, natstest.Admin)}, done: make(chan struct{})}
	for _, k := range []struct {
		secret *string
		admin  bool
	}{{&e.alice, false}, {&e.bob, false}, {&e.admin, true}} {
		*k.secret = auth.NewSecret()
		if err := keys.Put(ctx, auth.NewKey(*k.secret, auth.NewOwnerID(), k.admin)); err != nil {
			t.Fatal(err)
		}
	}
	store := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketNames), bus.KV(state.BucketInstances), bus.KV(state.BucketPlacements))
	e.m = deploy.NewManager(store, catalog.Default(), bus.Publisher)
	e.live = transport.NewLive(e.m, bus.KV(state.BucketServices), bus.JS, e.done, quiet)
	h := transport.NewHandler(e.m, deploy.NewIdempotent(e.m, kvstore.NewClaims(bus.KV(state.BucketIdempotency))), deploy.NewKeys(keys, e.m), keys, quiet, transport.WithLive(e.live))
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(e.endStreams) // before srv.Close, which waits for open responses
	e.url = srv.URL
	return e
}

func (e *liveEnv) endStreams() {
	select {
	case <-e.done:
	default:
		close(e.done)
	}
}

// sse is one server-sent event; comment is set for a comment line.
type sse struct {
	event, data, comment string
}

// watch opens the watch stream with secret and returns its events as
// they arrive; the channel closes when the stream ends.
func (e *liveEnv) watch(secret string) (*http.Response, <-chan sse) {
	e.t.Helper()
	req, err := http.NewRequest("GET", e.url+"/api/v1/services/watch", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { resp.Body.Close() })
	out := make(chan sse, 64)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		var cur sse
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if cur.event != "" || cur.data != "" {
					out <- cur
				}
				cur = sse{}
			case strings.HasPrefix(line, ":"):
				out <- sse{comment: strings.TrimSpace(line[1:])}
			case strings.HasPrefix(line, "event: "):
				cur.event = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				cur.data = line[len("data: "):]
			}
		}
	}()
	return resp, out
}

// next returns the next event that is not a comment, failing the test
// when none comes within the deadline.
func next(t *testing.T, ch <-chan sse) sse {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("the watch stream ended")
			}
			if ev.comment == "" {
				return ev
			}
		case <-timeout:
			t.Fatal("no event within 10s")
		}
	}
}

func decodeAs[T any](t *testing.T, ev sse) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(ev.data), &v); err != nil {
		t.Fatalf("event %s: decode %q: %v", ev.event, ev.data, err)
	}
	return v
}

func names(list []state.Service) []string {
	var out []string
	for _, s := range list {
		out = append(out, s.Name)
	}
	return out
}

// TestWatchScopesToOwner follows alice's stream while alice and bob change
// services: the snapshot and every update are alice's alone, a deleted
// service arrives once with status deleted, and an admin sees both.
func TestWatchScopesToOwner(t *testing.T) {
	e := newLiveEnv(t)
	e.create(e.alice, "a-first")
	e.create(e.bob, "b-first")
	gone := e.create(e.alice, "a-gone")
	if resp := e.do(e.alice, "DELETE", "/api/v1/services/"+gone.ID, `{"confirm_name":"a-gone"}`, nil); resp.StatusCode != 202 {
		t.Fatalf("delete: status %d", resp.StatusCode)
	}

	resp, alice := e.watch(e.alice)
	if got, want := resp.Header.Get("Content-Type"), "text/event-stream"; got != want {
		t.Fatalf("Content-Type %q, want %q", got, want)
	}
	snap := next(t, alice)
	if snap.event != "snapshot" {
		t.Fatalf("first event %q, want snapshot", snap.event)
	}
	if got := names(decodeAs[[]state.Service](t, snap)); len(got) != 1 || got[0] != "a-first" {
		t.Fatalf("alice's snapshot %v, want [a-first]: not bob's, not deleted ones", got)
	}
	_, admin := e.watch(e.admin)
	if got := names(decodeAs[[]state.Service](t, next(t, admin))); strings.Join(got, ",") != "a-first,b-first" {
		t.Fatalf("admin's snapshot %v, want [a-first b-first]", got)
	}

	e.create(e.bob, "b-second")
	second := e.create(e.alice, "a-second")
	ev := next(t, alice)
	if s := decodeAs[state.Service](t, ev); ev.event != "service" || s.Name != "a-second" || s.Status == state.StatusDeleted {
		t.Fatalf("alice got %s %+v, want a-second (and never b-second)", ev.event, s)
	}
	if s := decodeAs[state.Service](t, next(t, admin)); s.Name != "b-second" {
		t.Fatalf("admin got %s, want b-second", s.Name)
	}

	if resp := e.do(e.alice, "POST", "/api/v1/services/"+second.ID+"/scale", `{"instances":3}`, nil); resp.StatusCode != 200 {
		t.Fatalf("scale: status %d", resp.StatusCode)
	}
	if s := decodeAs[state.Service](t, next(t, alice)); s.ID != second.ID || s.Instances != 3 {
		t.Fatalf("after scale alice got %+v", s)
	}
	if resp := e.do(e.alice, "DELETE", "/api/v1/services/"+second.ID, `{"confirm_name":"a-second"}`, nil); resp.StatusCode != 202 {
		t.Fatalf("delete: status %d", resp.StatusCode)
	}
	// No instance holds the deletion up: the service ends deleted.
	for {
		s := decodeAs[state.Service](t, next(t, alice))
		if s.ID != second.ID {
			t.Fatalf("alice got another service: %+v", s)
		}
		if s.Status == state.StatusDeleted {
			break
		}
	}
	e.create(e.bob, "b-third")
	third := e.create(e.alice, "a-third")
	if s := decodeAs[state.Service](t, next(t, alice)); s.ID != third.ID {
		t.Fatalf("alice got %+v, want a-third", s)
	}
}

// TestWatchHeartbeatAndEnd: an idle stream sends heartbeats, and ends
// when the deployer stops and when its lifetime is over.
func TestWatchHeartbeatAndEnd(t *testing.T) {
	e := newLiveEnv(t)
	e.live.Heartbeat = 20 * time.Millisecond
	_, ch := e.watch(e.alice)
	if ev := next(t, ch); ev.event != "snapshot" || ev.data != "[]" {
		t.Fatalf("first event %+v, want an empty snapshot", ev)
	}
	timeout := time.After(10 * time.Second)
	for beat := false; !beat; {
		select {
		case ev := <-ch:
			beat = ev.comment == "heartbeat"
		case <-timeout:
			t.Fatal("no heartbeat within 10s")
		}
	}
	e.endStreams()
	waitEnd(t, ch, "the deployer closed it")

	short := newLiveEnv(t)
	short.live.Lifetime = 200 * time.Millisecond
	_, ch = short.watch(short.alice)
	if ev := next(t, ch); ev.event != "snapshot" {
		t.Fatalf("first event %+v, want the snapshot", ev)
	}
	waitEnd(t, ch, "its lifetime was over")
}

func waitEnd(t *testing.T, ch <-chan sse, when string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("the stream did not end when %s", when)
		}
	}
}

func TestWatchNeedsKey(t *testing.T) {
	e := newLiveEnv(t)
	resp := e.do("", "GET", "/api/v1/services/watch", "", nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d, want 401", resp.StatusCode)
	}
}

// TestServiceEvents reads a service's lifecycle from the streams: what
// the deployer announced and what a worker reported, newest first, and
// nothing about other services. Another owner gets 404.
func TestServiceEvents(t *testing.T) {
	e := newLiveEnv(t)
	s := e.create(e.alice, "chat")
	other := e.create(e.bob, "other")
	if resp := e.do(e.alice, "POST", "/api/v1/services/"+s.ID+"/scale", `{"instances":2}`, nil); resp.StatusCode != 200 {
		t.Fatalf("scale: status %d", resp.StatusCode)
	}
	ctx := context.Background()
	inst := uuid.NewString()
	for _, ev := range []events.Event{
		events.InstanceReadyV1{Meta: events.NewMeta(), InstanceID: inst, ServiceID: s.ID, WorkerID: "w1", Engine: "simulator", Endpoint: "http://10.0.0.1:9100/v1"},
		events.InstanceReadyV1{Meta: events.NewMeta(), InstanceID: uuid.NewString(), ServiceID: other.ID, WorkerID: "w1", Engine: "simulator", Endpoint: "http://10.0.0.1:9101/v1"},
		events.InstanceFailedV1{Meta: events.NewMeta(), InstanceID: uuid.NewString(), ServiceID: s.ID, WorkerID: "w1", Engine: "simulator", Reason: "readiness check timed out", ExitCode: -1, LogTail: "secret engine output"},
	} {
		if err := e.bus.Publisher.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}

	var got []transport.LifecycleEvent
	if resp := e.do(e.alice, "GET", "/api/v1/services/"+s.ID+"/events", "", &got); resp.StatusCode != 200 {
		t.Fatalf("events: status %d", resp.StatusCode)
	}
	var types []string
	for _, ev := range got {
		types = append(types, ev.Type)
		if ev.ID == "" || ev.OccurredAt.IsZero() || ev.Message == "" {
			t.Errorf("incomplete event %+v", ev)
		}
	}
	want := []string{events.SubjectInstanceFailedV1, events.SubjectInstanceReadyV1, events.SubjectServiceScaledV1, events.SubjectServiceCreatedV1}
	if strings.Join(types, " ") != strings.Join(want, " ") {
		t.Fatalf("event types %v, want %v (newest first, only this service's)", types, want)
	}
	if got[1].InstanceID != inst || !strings.Contains(got[1].Message, "ready") {
		t.Errorf("ready event %+v", got[1])
	}
	if m := got[2].Message; !strings.Contains(m, "from 1 to 2") {
		t.Errorf("scaled message %q, want it to say from 1 to 2", m)
	}
	if m := got[0].Message; !strings.Contains(m, "readiness check timed out") || strings.Contains(m, "secret engine output") {
		t.Errorf("failed message %q: want the reason and never the log tail", m)
	}
	for _, ev := range got {
		if strings.Contains(ev.Message, "10.0.0.1") {
			t.Errorf("event %+v shows an engine endpoint", ev)
		}
	}

	if resp := e.do(e.alice, "GET", "/api/v1/services/"+s.ID+"/events?limit=1", "", &got); resp.StatusCode != 200 || len(got) != 1 || got[0].Type != events.SubjectInstanceFailedV1 {
		t.Fatalf("limit=1: status %d, %+v", resp.StatusCode, got)
	}
	var apiErr apiError
	if resp := e.do(e.alice, "GET", "/api/v1/services/"+s.ID+"/events?limit=0", "", &apiErr); resp.StatusCode != 400 || apiErr.param() != "limit" {
		t.Fatalf("limit=0: status %d, param %q", resp.StatusCode, apiErr.param())
	}
	if resp := e.do(e.bob, "GET", "/api/v1/services/"+s.ID+"/events", "", nil); resp.StatusCode != 404 {
		t.Fatalf("bob reading alice's events: status %d, want 404", resp.StatusCode)
	}
	if resp := e.do(e.admin, "GET", "/api/v1/services/"+s.ID+"/events", "", &got); resp.StatusCode != 200 || len(got) != 4 {
		t.Fatalf("admin: status %d, %d events", resp.StatusCode, len(got))
	}
	if resp := e.do(e.alice, "GET", "/api/v1/services/"+other.ID+"/events", "", nil); resp.StatusCode != 404 {
		t.Fatalf("alice reading bob's events: status %d, want 404", resp.StatusCode)
	}
	// A service with nothing after its creation has just that.
	fresh := e.create(e.bob, "fresh")
	if resp := e.do(e.bob, "GET", "/api/v1/services/"+fresh.ID+"/events", "", &got); resp.StatusCode != 200 || len(got) != 1 || got[0].Type != events.SubjectServiceCreatedV1 {
		t.Fatalf("fresh service: status %d, %+v", resp.StatusCode, got)
	}
}
