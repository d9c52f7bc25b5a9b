package lease_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/lease"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const ttl = 3 * time.Second

// bucket returns a leases bucket with TTL ttl on srv, created by the
// test's admin, and a connection of its own, which the test may close to
// cut a process off.
func bucket(t *testing.T, srv *natstest.Server, ttl time.Duration) (jetstream.KeyValue, *nats.Conn) {
	t.Helper()
	ctx := context.Background()
	if _, err := srv.Bus(t, natstest.Admin).JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "leases_test", TTL: ttl}); err != nil {
		t.Fatal(err)
	}
	nc := srv.Connect(t, natstest.Admin)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, "leases_test")
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
		kv, nc := bucket(t, srv, ttl)
		ctx, cancel := context.WithCancel(context.Background())
		r := &replica{name: name, cancel: cancel, nc: nc, done: make(chan struct{})}
		go func() {
			defer close(r.done)
			lease.New(kv, "scaler", name, ttl, quiet).Lead(ctx, "leader", tl.lead(name))
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
	kv, _ := bucket(t, natstest.New(t), ttl)
	ctx, cancel := context.WithCancel(context.Background())
	if _, ok, err := lease.Leader(ctx, kv, "deployer.leader"); ok || err != nil {
		t.Fatalf("leader of an empty bucket: %v, %v", ok, err)
	}
	done := make(chan struct{})
	leading := make(chan struct{})
	go func() {
		defer close(done)
		lease.New(kv, "deployer", "d1", ttl, quiet).Lead(ctx, "leader", func(ctx context.Context) { close(leading); <-ctx.Done() })
	}()
	<-leading
	h, ok, err := lease.Leader(ctx, kv, "deployer.leader")
	if err != nil || !ok || h.ID != "d1" {
		t.Fatalf("leader %+v, %v, %v; want d1", h, ok, err)
	}
	cancel()
	<-done
	if _, ok, err := lease.Leader(context.Background(), kv, "deployer.leader"); ok || err != nil {
		t.Fatalf("lease kept after its holder stopped: %v, %v", ok, err)
	}
}

// leases returns holder's leases of billing on kv, whose TTL is ttl,
// trying again quickly.
func leases(kv jetstream.KeyValue, holder string, ttl time.Duration) *lease.Leases {
	l := lease.New(kv, "billing", holder, ttl, quiet)
	l.Retry = 20 * time.Millisecond
	return l
}

// holderValue is a lease key's value as holder id writes it.
func holderValue(t *testing.T, id string) []byte {
	t.Helper()
	b, err := json.Marshal(lease.Holder{ID: id, Since: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Work under a lease runs in one process at a time.
func TestLeasesAreHeldByOneAtATime(t *testing.T) {
	kv, _ := bucket(t, natstest.New(t), ttl)
	var inside, most, runs atomic.Int32
	var wg sync.WaitGroup
	for i := range 4 {
		l := leases(kv, "holder-"+string(rune('a'+i)), ttl)
		wg.Go(func() {
			for range 3 {
				err := l.Hold(context.Background(), "migrate", func(ctx context.Context) error {
					n := inside.Add(1)
					defer inside.Add(-1)
					for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
					}
					runs.Add(1)
					time.Sleep(30 * time.Millisecond)
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if most.Load() != 1 || runs.Load() != 12 {
		t.Errorf("%d held the lease at once at most, %d runs; want 1 and 12", most.Load(), runs.Load())
	}
}

// A lease outlives its TTL while its holder renews it, and is taken over
// once a holder that died can no longer renew it.
func TestLeaseOutlivesItsTTLWhileHeldAndIsTakenOverWhenItsHolderDies(t *testing.T) {
	const short = 1500 * time.Millisecond
	kv, _ := bucket(t, natstest.New(t), short)
	a, b := leases(kv, "a", short), leases(kv, "b", short)
	// a holds it for three TTLs: renewals keep b out.
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Hold(context.Background(), "jobs", func(ctx context.Context) error {
			select {
			case <-time.After(3 * short):
			case <-ctx.Done():
				t.Errorf("a lost the lease while holding it: %v", context.Cause(ctx))
			}
			return nil
		})
	}()
	time.Sleep(200 * time.Millisecond)
	held, err := b.TryHold(context.Background(), "jobs", func(context.Context) error { return nil })
	if err != nil || held {
		t.Errorf("b took a held lease: %v, %v", held, err)
	}
	<-done
	if held, err := b.TryHold(context.Background(), "jobs", func(context.Context) error { return nil }); err != nil || !held {
		t.Errorf("b could not take the lease a gave back: %v, %v", held, err)
	}
	// A holder that dies never gives it back: it expires.
	if _, err := kv.Create(context.Background(), lease.Key("billing", "dead"), holderValue(t, "a process that died")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Hold(ctx, "dead", func(context.Context) error { return nil }); err != nil {
		t.Fatalf("waiting for an expired lease: %v", err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("took a dead holder's lease after %v, before it expired", waited)
	}
	if err := b.Hold(ctx, "gone", func(context.Context) error { return errors.New("work failed") }); err == nil {
		t.Error("Hold hid the work's error")
	}
}

// A lease its holder could not give back (NATS away at that moment) is the
// holder's to take up again at once; others still wait for it to expire.
func TestALeaseNotGivenBackIsItsHoldersAgain(t *testing.T) {
	const long = 30 * time.Second
	kv, _ := bucket(t, natstest.New(t), long)
	if _, err := kv.Create(context.Background(), lease.Key("billing", "migrate"), holderValue(t, "a")); err != nil {
		t.Fatal(err)
	}
	if held, err := leases(kv, "b", long).TryHold(context.Background(), "migrate", func(context.Context) error { return nil }); held || err != nil {
		t.Errorf("another process took it: %v, %v", held, err)
	}
	ran := false
	if held, err := leases(kv, "a", long).TryHold(context.Background(), "migrate", func(context.Context) error { ran = true; return nil }); !held || err != nil || !ran {
		t.Errorf("its holder could not take it up again: %v, %v", held, err)
	}
	if _, err := kv.Get(context.Background(), lease.Key("billing", "migrate")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("the lease was not given back: %v", err)
	}
}

// A lease taken over by another holder (its key written by someone else)
// ends the work's context with the cause, and is not given back: the key
// is the other holder's now.
func TestALeaseTakenOverEndsTheWork(t *testing.T) {
	kv, _ := bucket(t, natstest.New(t), ttl)
	l := leases(kv, "a", ttl)
	key := lease.Key("billing", "jobs")
	err := l.Hold(context.Background(), "jobs", func(ctx context.Context) error {
		e, err := kv.Get(ctx, key)
		if err != nil {
			return err
		}
		if _, err := kv.Update(ctx, key, holderValue(t, "b"), e.Revision()); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * ttl):
			return errors.New("the work went on after its lease was taken over")
		}
	})
	if errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("Hold = %v, want unavailable: the lease was lost", err)
	}
	if h, ok, err := lease.Leader(context.Background(), kv, key); err != nil || !ok || h.ID != "b" {
		t.Errorf("lease after the take-over: %+v, %v, %v; want b's, kept", h, ok, err)
	}
}
