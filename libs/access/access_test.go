package access_test

import (
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/nats-io/nats-server/v2/server"
)

// subjectMatch reports whether a NATS subject matches a pattern with the
// wildcards * and >.
func subjectMatch(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, tok := range p {
		if tok == ">" {
			return len(s) > i
		}
		if i >= len(s) || tok != "*" && tok != s[i] {
			return false
		}
	}
	return len(p) == len(s)
}

// under reports whether pattern is the event subject base or one of its
// per-worker or per-consumer subjects.
func under(pattern, base string) bool {
	return pattern == base || strings.HasPrefix(pattern, base+".")
}

// streamOf returns the event stream that captures subject.
func streamOf(subject string) string {
	for _, st := range events.Streams {
		for _, s := range st.Subjects {
			if subjectMatch(s, subject) || strings.HasPrefix(subject, strings.TrimSuffix(s, ">")) {
				return st.Name
			}
		}
	}
	return ""
}

// TestEveryEventHasOnePublisher checks the table against the event
// catalog: each event type is published by exactly one identity, each
// grant to publish is for an event type, and each event lands in a stream
// its publisher creates. A new event type without a publisher in the
// table fails here.
func TestEveryEventHasOnePublisher(t *testing.T) {
	for _, subject := range slices.Sorted(maps.Keys(events.Registry)) {
		var publishers []string
		for _, id := range access.Identities {
			if slices.ContainsFunc(id.Publishes, func(p string) bool { return under(p, subject) }) {
				publishers = append(publishers, id.Name)
			}
		}
		if len(publishers) != 1 {
			t.Errorf("%s: published by %v in access.Identities, want exactly one identity", subject, publishers)
			continue
		}
		id, _ := access.For(publishers[0])
		if st := streamOf(subject); !slices.Contains(id.Streams, st) {
			t.Errorf("%s lands in stream %q, which its publisher %s does not create (it creates %v)", subject, st, id.Name, id.Streams)
		}
	}
	for _, id := range access.Identities {
		for _, p := range id.Publishes {
			if !slices.ContainsFunc(slices.Collect(maps.Keys(events.Registry)), func(s string) bool { return under(p, s) }) {
				t.Errorf("%s may publish %s, which is no event type in events.Registry", id.Name, p)
			}
		}
	}
}

// TestEveryEventIsRead checks that each event type but dead letters has a
// durable consumer in the table whose filter covers it, and that dead
// letters are read by a service.
func TestEveryEventIsRead(t *testing.T) {
	for _, subject := range slices.Sorted(maps.Keys(events.Registry)) {
		concrete := subject
		if ev := events.Registry[subject]; ev.Subject() != subject {
			concrete = subject + ".w1" // a per-worker or per-consumer subject
		}
		var readers []string
		for _, id := range access.Identities {
			for _, c := range id.Consumers {
				if slices.ContainsFunc(c.Filters, func(f string) bool { return subjectMatch(f, concrete) }) {
					readers = append(readers, id.Name+"/"+c.Durable)
				}
			}
			if id.Name != access.EventsReader && slices.Contains(id.Reads, streamOf(subject)) && subject == events.SubjectEventRejectedV1 {
				readers = append(readers, id.Name+" (reads the stream)")
			}
		}
		if len(readers) == 0 {
			t.Errorf("%s: no identity in access.Identities reads it", subject)
		}
	}
}

// TestStreamsAndBuckets checks that every stream and bucket has exactly
// one identity that creates it, which writes it, and that the table names
// no stream or bucket that does not exist.
func TestStreamsAndBuckets(t *testing.T) {
	streams := map[string]bool{}
	for _, st := range events.Streams {
		streams[st.Name] = true
	}
	buckets := map[string]bool{}
	for _, b := range state.Buckets {
		buckets[b.Bucket] = true
	}
	for _, b := range access.ObjectStores {
		buckets[b] = true
	}
	for name := range streams {
		var owners []string
		for _, id := range access.Identities {
			if slices.Contains(id.Streams, name) {
				owners = append(owners, id.Name)
			}
		}
		if len(owners) != 1 {
			t.Errorf("stream %s: created by %v, want exactly one identity", name, owners)
		}
	}
	for name := range buckets {
		var owners, users []string
		shared := true // every identity that writes it writes only its own keys
		for _, id := range access.Identities {
			switch id.Buckets[name] {
			case access.Write:
				shared = false
				users = append(users, id.Name)
			case access.WriteOwn:
				users = append(users, id.Name)
			}
			if slices.Contains(id.Owns, name) {
				owners = append(owners, id.Name)
				if l := id.Buckets[name]; l != access.Write && l != access.WriteOwn {
					t.Errorf("bucket %s: %s creates it but may not write it", name, id.Name)
				}
			}
		}
		switch {
		case shared && len(users) > 0:
			// Each of its users creates it, so each can start alone.
			if !slices.Equal(owners, users) {
				t.Errorf("bucket %s, whose users write their own keys: created by %v, want each of them, %v", name, owners, users)
			}
		case len(owners) != 1:
			t.Errorf("bucket %s: created by %v, want exactly one identity", name, owners)
		}
	}
	for _, id := range access.Identities {
		for _, b := range id.Purges {
			if id.Buckets[b] != access.Write {
				t.Errorf("%s purges bucket %s but may not write it", id.Name, b)
			}
		}
	}
	durables := map[string]string{}
	for _, id := range access.Identities {
		for _, s := range id.StreamsUsed() {
			if !streams[s] {
				t.Errorf("%s uses stream %s, which events.Streams lacks", id.Name, s)
			}
		}
		for b := range id.Buckets {
			if !buckets[b] {
				t.Errorf("%s uses bucket %s, which state.Buckets and access.ObjectStores lack", id.Name, b)
			}
		}
		for _, c := range id.Consumers {
			for _, f := range c.Filters {
				if streamOf(f) != c.Stream {
					t.Errorf("%s: consumer %s on %s filters on %s, which is not in that stream", id.Name, c.Durable, c.Stream, f)
				}
			}
			if c.Durable == access.AnyName {
				continue
			}
			if other, dup := durables[c.Stream+"/"+c.Durable]; dup {
				t.Errorf("durable %s on %s is both %s's and %s's", c.Durable, c.Stream, other, id.Name)
			}
			durables[c.Stream+"/"+c.Durable] = id.Name
		}
	}
}

// TestReaderIsReadOnly checks the events reader: it reads every event
// stream and may publish nothing but stream information and message
// requests.
func TestReaderIsReadOnly(t *testing.T) {
	id, ok := access.For(access.EventsReader)
	if !ok {
		t.Fatal("no events reader identity")
	}
	var all []string
	for _, st := range events.Streams {
		all = append(all, st.Name)
	}
	if !reflect.DeepEqual(slices.Sorted(slices.Values(id.Reads)), slices.Sorted(slices.Values(all))) {
		t.Errorf("events reader reads %v, want every stream %v", id.Reads, all)
	}
	if len(id.Publishes) > 0 || len(id.Buckets) > 0 || len(id.Consumers) > 0 || len(id.Streams) > 0 || len(id.Owns) > 0 || len(id.Purges) > 0 {
		t.Errorf("events reader may change something: %+v", id)
	}
	for _, s := range id.NATSPermissions().Publish.Allow {
		if !strings.HasPrefix(s, "$JS.API.") {
			t.Errorf("events reader may publish %s", s)
		}
		for _, op := range []string{"STREAM.CREATE", "STREAM.UPDATE", "STREAM.DELETE", "STREAM.PURGE", "STREAM.MSG.DELETE", "CONSUMER."} {
			if strings.HasPrefix(s, "$JS.API."+op) {
				t.Errorf("events reader may %s: %s", op, s)
			}
		}
	}
}

// TestNoOneDeletes checks that no identity may delete or purge a stream
// or delete messages, except the router purging its own object store's
// replaced chunks, and the deployer and scaler purging old delete markers
// from the buckets they write (Purges).
func TestNoOneDeletes(t *testing.T) {
	for _, id := range access.Identities {
		purges := []string{"$JS.API.STREAM.PURGE.OBJ_" + state.BucketImages}
		for _, b := range id.Purges {
			purges = append(purges, "$JS.API.STREAM.PURGE."+access.StreamOf(b))
		}
		for _, s := range id.NATSPermissions().Publish.Allow {
			for _, op := range []string{"STREAM.DELETE", "STREAM.MSG.DELETE", "STREAM.PURGE"} {
				if strings.Contains(s, op) && !slices.Contains(purges, s) {
					t.Errorf("%s may publish %s", id.Name, s)
				}
			}
			if s == ">" || s == "$JS.>" || s == "$JS.API.>" || s == "$JS.API.STREAM.>" || s == "$KV.>" {
				t.Errorf("%s may publish %s", id.Name, s)
			}
		}
	}
}

// TestConfParses loads the nats-server configuration AuthorizationConf
// renders with the server's own parser and checks that it gives each
// identity exactly the permissions of the table.
func TestConfParses(t *testing.T) {
	keys := map[string]string{}
	for _, name := range access.Names() {
		keys[name] = "$" + access.NKeyVar(name)
	}
	pubs, err := access.EnsureSeeds(t.TempDir(), access.Names())
	if err != nil {
		t.Fatal(err)
	}
	for name, pub := range pubs {
		t.Setenv(access.NKeyVar(name), pub)
	}
	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, []byte("listen: 127.0.0.1:-1\n"+access.AuthorizationConf(keys)), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats-server refuses the configuration: %v\n%s", err, access.AuthorizationConf(keys))
	}
	if len(opts.Nkeys) != len(access.Identities) || len(opts.Users) != 0 {
		t.Fatalf("%d NKey users and %d others, want %d NKey users", len(opts.Nkeys), len(opts.Users), len(access.Identities))
	}
	for _, u := range opts.Nkeys {
		var name string
		for n, pub := range pubs {
			if pub == u.Nkey {
				name = n
			}
		}
		id, ok := access.For(name)
		if !ok {
			t.Fatalf("user %s is no identity", u.Nkey)
		}
		want := id.NATSPermissions()
		if got := u.Permissions; !reflect.DeepEqual(got.Publish.Allow, want.Publish.Allow) || !reflect.DeepEqual(got.Publish.Deny, want.Publish.Deny) ||
			!reflect.DeepEqual(got.Subscribe.Allow, want.Subscribe.Allow) || len(got.Subscribe.Deny) != 0 {
			t.Errorf("%s: the server reads %+v %+v, want %+v", name, got.Publish, got.Subscribe, want)
		}
	}
}

// TestSecurityDoc checks that docs/security.md shows the permission table
// as the code has it.
func TestSecurityDoc(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "security.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), access.Markdown()) {
		t.Errorf("docs/security.md does not show the permission table as libs/access has it; paste this:\n\n%s", access.Markdown())
	}
}
