package lease_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/lease"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const ttl = 3 * time.Second

// bucket connects to url and returns a leases bucket with the test's TTL,
// and the connection, which the test may close to cut a replica off.
func bucket(t *testing.T, url string) (jetstream.KeyValue, *nats.Conn) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateOrUpdateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "leases", TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return kv, nc
}

// timeline records who led when.
type timeline struct {
	mu      sync.Mutex
	leading map[string]bool
	overlap []string
	terms   []string
}

func (tl *timeline) lead(name string) func(context.Context) {
	return func(ctx context.Context) {
		tl.mu.Lock()
		for other, on := range tl.leading {
			if on {
				tl.overlap = append(tl.overlap, name+" while "+other)
			}
		}
		tl.leading[name] = true
		tl.terms = append(tl.terms, name)
		tl.mu.Unlock()
		<-ctx.Done()
		tl.mu.Lock()
		tl.leading[name] = false
		tl.mu.Unlock()
	}
}

func (tl *timeline) leader() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	for name, on := range tl.leading {
		if on {
			return name
		}
	}
	return ""
}

func waitLeader(t *testing.T, tl *timeline, not string, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if l := tl.leader(); l != "" && l != not {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new leader within %s (terms %v)", within, tl.terms)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// One of two replicas leads; when it stops, the other takes over at once;
// when a leader is cut off from NATS, the other takes over once the lease
// expires, and the cut-off one has stopped leading before that.
func TestElection(t *testing.T) {
	srv := natstest.New(t)
	tl := &timeline{leading: map[string]bool{}}
	type replica struct {
		name   string
		cancel context.CancelFunc
		nc     *nats.Conn
		done   chan struct{}
	}
	start := func(name string) *replica {
		kv, nc := bucket(t, srv.ClientURL())
		ctx, cancel := context.WithCancel(context.Background())
		r := &replica{name: name, cancel: cancel, nc: nc, done: make(chan struct{})}
		go func() {
			defer close(r.done)
			lease.New(kv, "scaler", name, ttl, quiet).Run(ctx, tl.lead(name))
		}()
		t.Cleanup(func() { cancel(); <-r.done })
		return r
	}
	replicas := map[string]*replica{}
	for _, n := range []string{"a", "b"} {
		replicas[n] = start(n)
	}
	first := waitLeader(t, tl, "", 10*time.Second)

	// Stopped: the other leads long before the lease would expire.
	stopped := time.Now()
	replicas[first].cancel()
	<-replicas[first].done
	second := waitLeader(t, tl, first, ttl)
	t.Logf("%s stopped; %s led after %s", first, second, time.Since(stopped).Round(time.Millisecond))

	// A third replica joins and follows.
	replicas["c"] = start("c")
	time.Sleep(ttl / 2)
	if l := tl.leader(); l != second {
		t.Fatalf("leader %q after a replica joined, want %q still", l, second)
	}

	// Cut off: it stops leading, and another takes over within the TTL
	// and a retry.
	cut := time.Now()
	replicas[second].nc.Close()
	third := waitLeader(t, tl, second, 2*ttl)
	t.Logf("%s cut off; %s led after %s", second, third, time.Since(cut).Round(time.Millisecond))

	tl.mu.Lock()
	defer tl.mu.Unlock()
	if len(tl.overlap) > 0 {
		t.Fatalf("two replicas led at once: %v", tl.overlap)
	}
}

// Leader reports who holds the lease.
func TestLeader(t *testing.T) {
	kv, _ := bucket(t, natstest.New(t).ClientURL())
	ctx, cancel := context.WithCancel(context.Background())
	if _, ok, err := lease.Leader(ctx, kv, "deployer"); ok || err != nil {
		t.Fatalf("leader of an empty bucket: %v, %v", ok, err)
	}
	done := make(chan struct{})
	leading := make(chan struct{})
	go func() {
		defer close(done)
		lease.New(kv, "deployer", "d1", ttl, quiet).Run(ctx, func(ctx context.Context) { close(leading); <-ctx.Done() })
	}()
	<-leading
	h, ok, err := lease.Leader(ctx, kv, "deployer")
	if err != nil || !ok || h.ID != "d1" {
		t.Fatalf("leader %+v, %v, %v; want d1", h, ok, err)
	}
	cancel()
	<-done
	if _, ok, err := lease.Leader(context.Background(), kv, "deployer"); ok || err != nil {
		t.Fatalf("lease kept after its holder stopped: %v, %v", ok, err)
	}
}
