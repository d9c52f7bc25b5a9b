package transport_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/services/billing/internal/transport"
	"github.com/nats-io/nats.go/jetstream"
)

// leaseBucket is a leases bucket with a short TTL, on a fresh server.
func leaseBucket(t *testing.T, ttl time.Duration) jetstream.KeyValue {
	t.Helper()
	ctx := context.Background()
	bus := natstest.New(t).Bus(t, natstest.Admin)
	kv, err := bus.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "leases_test", TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func TestLeasesAreHeldByOneAtATime(t *testing.T) {
	kv := leaseBucket(t, 3*time.Second)
	var inside, most, runs atomic.Int32
	var wg sync.WaitGroup
	for i := range 4 {
		l := transport.NewLeases(kv, "holder-"+string(rune('a'+i)), 3*time.Second)
		l.Poll = 20 * time.Millisecond
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

func TestLeaseOutlivesItsTTLWhileHeldAndIsTakenOverWhenItsHolderDies(t *testing.T) {
	kv := leaseBucket(t, 1500*time.Millisecond)
	a, b := transport.NewLeases(kv, "a", 1500*time.Millisecond), transport.NewLeases(kv, "b", 1500*time.Millisecond)
	b.Poll = 50 * time.Millisecond
	// a holds it for three TTLs: renewals keep b out.
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = a.Hold(context.Background(), "jobs", func(ctx context.Context) error {
			select {
			case <-time.After(4500 * time.Millisecond):
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
	if _, err := kv.Create(context.Background(), "billing.dead", []byte("a process that died")); err != nil {
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
	kv := leaseBucket(t, 30*time.Second)
	a := transport.NewLeases(kv, "a", 30*time.Second)
	if _, err := kv.Create(context.Background(), "billing.migrate", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if held, err := transport.NewLeases(kv, "b", 30*time.Second).TryHold(context.Background(), "migrate", func(context.Context) error { return nil }); held || err != nil {
		t.Errorf("another process took it: %v, %v", held, err)
	}
	ran := false
	if held, err := a.TryHold(context.Background(), "migrate", func(context.Context) error { ran = true; return nil }); !held || err != nil || !ran {
		t.Errorf("its holder could not take it up again: %v, %v", held, err)
	}
	if _, err := kv.Get(context.Background(), "billing.migrate"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("the lease was not given back: %v", err)
	}
}
