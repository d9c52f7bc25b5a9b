package access_test

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/state"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// probe is one connection as one identity.
type probe struct {
	name string
	nc   *nats.Conn
	js   jetstream.JetStream
}

func newProbe(t *testing.T, ns *natstest.Server, name string) *probe {
	t.Helper()
	nc := ns.Connect(t, name)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return &probe{name: name, nc: nc, js: js}
}

// refused publishes to subject, as a request would, and reports whether
// the server refused it. The server answers a publish it refuses with an
// error before it answers the flush that follows.
func (p *probe) refused(t *testing.T, subject string) bool {
	t.Helper()
	if err := p.nc.PublishRequest(subject, access.InboxPrefix(p.name)+".probe", nil); err != nil {
		t.Fatalf("%s: publish %s: %v", p.name, subject, err)
	}
	return p.flushRefused(t, subject)
}

// subscribeRefused subscribes to subject and reports whether the server
// refused it.
func (p *probe) subscribeRefused(t *testing.T, subject string) bool {
	t.Helper()
	sub, err := p.nc.SubscribeSync(subject)
	if err != nil {
		t.Fatalf("%s: subscribe %s: %v", p.name, subject, err)
	}
	defer sub.Unsubscribe()
	return p.flushRefused(t, subject)
}

func (p *probe) flushRefused(t *testing.T, subject string) bool {
	t.Helper()
	if err := p.nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatalf("%s: flush: %v", p.name, err)
	}
	err := p.nc.LastError()
	return err != nil && errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subject+`"`) && p.fresh(err)
}

// fresh reports whether err is a refusal not yet seen, and remembers it.
func (p *probe) fresh(err error) bool {
	if seen[p] == err {
		return false
	}
	seen[p] = err
	return true
}

var seen = map[*probe]error{}

// concreteSubjects are subjects on which each event type is published: a
// per-worker subject for worker w1, the dead letters of every durable
// consumer in the table and of one that is no one's.
func concreteSubjects() []string {
	var out []string
	for _, s := range slices.Sorted(maps.Keys(events.Registry)) {
		switch {
		case s == events.SubjectEventRejectedV1:
			for _, id := range access.Identities {
				for _, c := range id.Consumers {
					if c.Durable != access.AnyName {
						out = append(out, events.DeadLetterSubject(c.Durable))
					}
				}
			}
			out = append(out, events.DeadLetterSubject("someone-else"))
		case events.Registry[s].Subject() != s:
			out = append(out, s+".w1")
		default:
			out = append(out, s)
		}
	}
	return out
}

// concrete is a consumer as it exists on a server: a per-worker durable
// gets the worker w1's name and subject.
func concrete(c access.Consumer) access.Consumer {
	if c.Durable != access.AnyName {
		return c
	}
	f := strings.TrimSuffix(c.Filters[0], "*") + "w1"
	name := "inference-worker-w1"
	if strings.HasPrefix(f, events.SubjectInstanceReleasedV1) {
		name = "inference-worker-release-w1"
	}
	return access.Consumer{Stream: c.Stream, Durable: name, Filters: []string{f}}
}

func consumerConfig(c access.Consumer) jetstream.ConsumerConfig {
	cfg := jetstream.ConsumerConfig{Durable: c.Durable, AckPolicy: jetstream.AckExplicitPolicy}
	if len(c.Filters) == 1 {
		cfg.FilterSubject = c.Filters[0]
	} else {
		cfg.FilterSubjects = c.Filters
	}
	return cfg
}

// createSubject is the API subject that creates (or updates) c.
func createSubject(c access.Consumer) string {
	if len(c.Filters) == 1 {
		return "$JS.API.CONSUMER.CREATE." + c.Stream + "." + c.Durable + "." + c.Filters[0]
	}
	return "$JS.API.CONSUMER.CREATE." + c.Stream + "." + c.Durable
}

// TestPermissionsOnServer asks a real NATS server, for every identity of
// the table, what it may and may not do, and checks that the answer is
// the table's: every event subject of the catalog published (stored when
// allowed), every durable consumer of every identity created and read,
// every event stream read, every bucket read and written, every stream
// created, updated, deleted and purged, and core subscriptions to events
// and other identities' inboxes. What the table allows is done for real
// and must work; what it does not must be refused by the server.
func TestPermissionsOnServer(t *testing.T) {
	ns := natstest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := newProbe(t, ns, natstest.Admin)

	// The stage: one event on every subject, every durable consumer of
	// the table, a key in every bucket.
	for _, s := range concreteSubjects() {
		if _, err := admin.js.Publish(ctx, s, []byte(`{}`)); err != nil {
			t.Fatalf("admin publishes %s: %v", s, err)
		}
	}
	var consumers []access.Consumer
	for _, id := range access.Identities {
		for _, c := range id.Consumers {
			c = concrete(c)
			consumers = append(consumers, c)
			if _, err := admin.js.CreateOrUpdateConsumer(ctx, c.Stream, consumerConfig(c)); err != nil {
				t.Fatalf("admin creates %s on %s: %v", c.Durable, c.Stream, err)
			}
		}
	}
	kvs := map[string]jetstream.KeyValue{}
	for _, cfg := range state.Buckets {
		kv, err := admin.js.KeyValue(ctx, cfg.Bucket)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, "k", []byte("admin")); err != nil {
			t.Fatal(err)
		}
		kvs[cfg.Bucket] = kv
	}
	objects, err := admin.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: state.BucketImages})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := objects.PutBytes(ctx, "k", []byte("admin")); err != nil {
		t.Fatal(err)
	}

	for _, id := range access.Identities {
		t.Run(id.Name, func(t *testing.T) {
			p := newProbe(t, ns, id.Name)
			publishes(t, ctx, p, id)
			consumes(t, ctx, p, id, consumers)
			reads(t, ctx, p, id)
			buckets(t, ctx, p, id, kvs)
			streams(t, ctx, p, id)
			subscribes(t, p)
		})
	}
}

func publishes(t *testing.T, ctx context.Context, p *probe, id access.Identity) {
	for _, s := range concreteSubjects() {
		may := slices.ContainsFunc(id.Publishes, func(pat string) bool { return subjectMatch(pat, s) })
		if may {
			if _, err := p.js.Publish(ctx, s, []byte(`{}`)); err != nil {
				t.Errorf("%s may publish %s, but: %v", id.Name, s, err)
			}
		} else if !p.refused(t, s) {
			t.Errorf("%s may not publish %s, but the server took it", id.Name, s)
		}
	}
}

func consumes(t *testing.T, ctx context.Context, p *probe, id access.Identity, all []access.Consumer) {
	for _, c := range all {
		own := slices.ContainsFunc(id.Consumers, func(o access.Consumer) bool { return concrete(o).Durable == c.Durable && o.Stream == c.Stream })
		if !own {
			if !p.refused(t, createSubject(c)) {
				t.Errorf("%s may not create %s's consumer %s on %s, but the server took the request", id.Name, owner(c), c.Durable, c.Stream)
			}
			if !p.refused(t, "$JS.API.CONSUMER.MSG.NEXT."+c.Stream+"."+c.Durable) {
				t.Errorf("%s may not read %s's consumer %s on %s, but the server took the request", id.Name, owner(c), c.Durable, c.Stream)
			}
			continue
		}
		cons, err := p.js.CreateOrUpdateConsumer(ctx, c.Stream, consumerConfig(c))
		if err != nil {
			t.Errorf("%s: create its consumer %s on %s: %v", id.Name, c.Durable, c.Stream, err)
			continue
		}
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Errorf("%s: read its consumer %s: %v", id.Name, c.Durable, err)
			continue
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if err := m.DoubleAck(ctx); err != nil {
				t.Errorf("%s: ack on its consumer %s: %v", id.Name, c.Durable, err)
			}
		}
		if n != 1 {
			t.Errorf("%s: its consumer %s gave %d messages, want 1 (%v)", id.Name, c.Durable, n, batch.Error())
		}
	}
}

func owner(c access.Consumer) string {
	for _, id := range access.Identities {
		for _, o := range id.Consumers {
			if concrete(o).Durable == c.Durable {
				return id.Name
			}
		}
	}
	return "nobody"
}

func reads(t *testing.T, ctx context.Context, p *probe, id access.Identity) {
	for _, st := range events.Streams {
		// No identity reads a stream through a consumer of its own: the
		// ones that read streams get messages one by one.
		if !p.refused(t, "$JS.API.CONSUMER.CREATE."+st.Name+".probe") {
			t.Errorf("%s may not create a consumer of its own on %s, but the server took the request", id.Name, st.Name)
		}
		if !slices.Contains(id.Reads, st.Name) {
			if !p.refused(t, "$JS.API.STREAM.MSG.GET."+st.Name) || !p.refused(t, "$JS.API.DIRECT.GET."+st.Name) {
				t.Errorf("%s may not read %s, but the server took a message request", id.Name, st.Name)
			}
			continue
		}
		s, err := p.js.Stream(ctx, st.Name)
		if err != nil {
			t.Errorf("%s: stream %s: %v", id.Name, st.Name, err)
			continue
		}
		if _, err := s.GetMsg(ctx, 1); err != nil {
			t.Errorf("%s: get message 1 of %s: %v", id.Name, st.Name, err)
		}
	}
}

func buckets(t *testing.T, ctx context.Context, p *probe, id access.Identity, kvs map[string]jetstream.KeyValue) {
	for _, cfg := range state.Buckets {
		b := cfg.Bucket
		level := id.Buckets[b]
		if level == 0 {
			for _, s := range []string{
				"$JS.API.STREAM.INFO.KV_" + b, "$JS.API.DIRECT.GET.KV_" + b + ".$KV." + b + ".k",
				"$JS.API.STREAM.MSG.GET.KV_" + b, "$JS.API.CONSUMER.CREATE.KV_" + b + ".probe.$KV." + b + ".>",
			} {
				if !p.refused(t, s) {
					t.Errorf("%s may not read bucket %s, but the server took %s", id.Name, b, s)
				}
			}
		} else {
			kv, err := p.js.KeyValue(ctx, b)
			if err != nil {
				t.Errorf("%s: bucket %s: %v", id.Name, b, err)
				continue
			}
			if e, err := kv.Get(ctx, "k"); err != nil {
				t.Errorf("%s: get from %s: %v", id.Name, b, err)
			} else if level == access.Read && !bytes.Equal(e.Value(), []byte("admin")) {
				t.Errorf("%s: %s/k = %q, want admin", id.Name, b, e.Value())
			}
			w, err := kv.WatchAll(ctx)
			if err != nil {
				t.Errorf("%s: watch %s: %v", id.Name, b, err)
			} else {
				select {
				case <-w.Updates():
				case <-time.After(5 * time.Second):
					t.Errorf("%s: watch %s: nothing in 5s", id.Name, b)
				}
				_ = w.Stop()
			}
		}
		if level == access.WriteOwn {
			kv, err := p.js.KeyValue(ctx, b)
			if err != nil {
				continue
			}
			own := id.Name + ".k"
			if _, err := kv.Put(ctx, own, []byte(id.Name)); err != nil {
				t.Errorf("%s may write its own keys of %s, but: %v", id.Name, b, err)
			}
			if err := kv.Delete(ctx, own); err != nil {
				t.Errorf("%s may delete its own keys of %s, but: %v", id.Name, b, err)
			}
			for _, other := range append(access.Names(), natstest.Admin) {
				if other != id.Name && !p.refused(t, "$KV."+b+"."+other+".k") {
					t.Errorf("%s may write only its own keys of %s, but the server took a put of %s's", id.Name, b, other)
				}
			}
		}
		if level == access.Write {
			kv, err := p.js.KeyValue(ctx, b)
			if err != nil {
				continue
			}
			if _, err := kv.Put(ctx, "k", []byte(id.Name)); err != nil {
				t.Errorf("%s may write %s, but: %v", id.Name, b, err)
			}
			if _, err := kv.Put(ctx, "k", []byte("admin")); err != nil {
				t.Errorf("%s may write %s, but: %v", id.Name, b, err)
			}
			continue
		}
		if !p.refused(t, "$KV."+b+".k") {
			t.Errorf("%s may not write bucket %s, but the server took a put", id.Name, b)
		}
		if e, err := kvs[b].Get(ctx, "k"); err != nil || string(e.Value()) != "admin" {
			t.Errorf("%s/k after %s's refused put: %v %v", b, id.Name, e, err)
		}
	}
	// The object store.
	b := state.BucketImages
	switch id.Buckets[b] {
	case access.Write:
		obs, err := p.js.ObjectStore(ctx, b)
		if err != nil {
			t.Errorf("%s: object store %s: %v", id.Name, b, err)
			return
		}
		if _, err := obs.PutBytes(ctx, "mine", []byte(id.Name)); err != nil {
			t.Errorf("%s may write %s, but: %v", id.Name, b, err)
		}
		if got, err := obs.GetBytes(ctx, "k"); err != nil || string(got) != "admin" {
			t.Errorf("%s: read %s/k: %q %v", id.Name, b, got, err)
		}
	default:
		for _, s := range []string{"$O." + b + ".C.x", "$JS.API.STREAM.INFO.OBJ_" + b, "$JS.API.STREAM.PURGE.OBJ_" + b} {
			if !p.refused(t, s) {
				t.Errorf("%s may not use the object store %s, but the server took %s", id.Name, b, s)
			}
		}
	}
}

func streams(t *testing.T, ctx context.Context, p *probe, id access.Identity) {
	var all []string
	for _, st := range events.Streams {
		all = append(all, st.Name)
	}
	for _, cfg := range state.Buckets {
		all = append(all, access.StreamOf(cfg.Bucket))
	}
	all = append(all, access.StreamOf(state.BucketImages))
	for _, st := range all {
		owns := slices.Contains(id.Streams, st) || slices.ContainsFunc(id.Owns, func(b string) bool { return access.StreamOf(b) == st })
		for _, op := range []string{"CREATE", "UPDATE"} {
			if !owns && !p.refused(t, "$JS.API.STREAM."+op+"."+st) {
				t.Errorf("%s may not %s stream %s, but the server took the request", id.Name, op, st)
			}
		}
		for _, op := range []string{"DELETE", "MSG.DELETE", "PURGE"} {
			if op == "PURGE" && st == access.StreamOf(state.BucketImages) && id.Buckets[state.BucketImages] == access.Write {
				continue // replaced objects' chunks
			}
			if op == "PURGE" && slices.ContainsFunc(id.Purges, func(b string) bool { return access.StreamOf(b) == st }) {
				continue // old delete markers
			}
			if !p.refused(t, "$JS.API.STREAM."+op+"."+st) {
				t.Errorf("%s may not %s stream %s, but the server took the request", id.Name, op, st)
			}
		}
	}
	// The owner updates its streams at start: with the same configuration
	// this changes nothing.
	for _, cfg := range events.Streams {
		if slices.Contains(id.Streams, cfg.Name) {
			cfg.Replicas = 1
			if _, err := p.js.CreateOrUpdateStream(ctx, cfg); err != nil {
				t.Errorf("%s: update its stream %s: %v", id.Name, cfg.Name, err)
			}
		}
	}
}

func subscribes(t *testing.T, p *probe) {
	for _, s := range concreteSubjects() {
		if !p.subscribeRefused(t, s) {
			t.Errorf("%s may not subscribe to %s (events are read through JetStream), but the server took it", p.name, s)
		}
	}
	for _, other := range append(access.Names(), natstest.Admin) {
		inbox := access.InboxPrefix(other) + ".>"
		if refused := p.subscribeRefused(t, inbox); refused != (other != p.name) {
			t.Errorf("%s subscribing to %s's inbox %s: refused %v", p.name, other, inbox, refused)
		}
	}
	if !p.subscribeRefused(t, "_INBOX.>") || !p.subscribeRefused(t, ">") {
		t.Errorf("%s may subscribe to the default inbox or to everything", p.name)
	}
}
