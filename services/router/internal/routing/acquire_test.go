package routing_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/modelport/modelport/services/router/internal/routing"
)

// acquired is what one held request got.
type acquired struct {
	order    int
	instance string
	release  func()
	err      error
}

// holdRequests starts n requests for svc, one after another, each held
// (the service has no instance); it returns once all are held and a
// channel of what each got.
func holdRequests(t *testing.T, tb *routing.Table, ctx context.Context, svc string, n int) <-chan acquired {
	t.Helper()
	out := make(chan acquired, n)
	for i := range n {
		held := make(chan struct{})
		go func() {
			e, release, err := tb.Acquire(ctx, svc, routing.Request{}, func() { close(held) })
			a := acquired{order: i, release: release, err: err}
			if err == nil {
				a.instance = e.Instance.ID
			}
			out <- a
		}()
		select {
		case <-held:
		case <-time.After(5 * time.Second):
			t.Fatalf("request %d not held", i)
		}
	}
	if got := tb.Waiting(svc); got != n {
		t.Fatalf("%d requests held, want %d", got, n)
	}
	return out
}

// TestAcquireWakesInOrder: requests held for a service with no instance
// are handed one in the order they came, and a request that comes while
// others are held waits behind them.
func TestAcquireWakesInOrder(t *testing.T) {
	tb := routing.NewTable()
	tb.SpreadWait = time.Minute
	svc := service("s1", "u-o/a")
	svc.Instances = 2 // the first arrival takes half the held requests
	tb.PutService(svc)
	const n = 20
	got := holdRequests(t, tb, context.Background(), "s1", n)
	tb.PutInstance(ready("s1", "i1"))
	first := map[int]bool{}
	for range n / 2 {
		a := <-got
		if a.err != nil || a.instance != "i1" {
			t.Fatalf("request %d: %+v", a.order, a)
		}
		first[a.order] = true
		defer a.release()
	}
	for i := range n / 2 {
		if !first[i] {
			t.Errorf("the first instance served held requests %v, want the %d that came first", first, n/2)
			break
		}
	}
	// A newcomer queues behind the ones still held.
	late := make(chan acquired, 1)
	held := make(chan struct{})
	go func() {
		e, release, err := tb.Acquire(context.Background(), "s1", routing.Request{}, func() { close(held) })
		a := acquired{order: n, release: release, err: err}
		if err == nil {
			a.instance = e.Instance.ID
		}
		late <- a
	}()
	select {
	case <-held:
	case a := <-late:
		a.release()
		t.Fatalf("a request that came after %d held ones passed them (got %s)", n/2, a.instance)
	}
	tb.PutInstance(ready("s1", "i2"))
	for range n / 2 {
		a := <-got
		if a.err != nil {
			t.Fatal(a.err)
		}
		defer a.release()
	}
	a := <-late
	if a.err != nil {
		t.Fatal(a.err)
	}
	a.release()
	if got := tb.Waiting("s1"); got != 0 {
		t.Errorf("%d still held", got)
	}
}

// TestAcquireSpreads: while a service has fewer instances up than it
// wants, each arrival takes its share of the held requests; the rest wait
// for the next instance.
func TestAcquireSpreads(t *testing.T) {
	tb := routing.NewTable()
	tb.SpreadWait = time.Minute // only arrivals hand requests out here
	svc := service("s1", "u-o/a")
	svc.Instances = 4
	tb.PutService(svc)
	const n = 40
	got := holdRequests(t, tb, context.Background(), "s1", n)
	counts := map[string]int{}
	for i := range 4 {
		tb.PutInstance(ready("s1", fmt.Sprintf("i%d", i)))
		// Arrival i takes ceil(held / (instances still to come + 1)).
		want := []int{10, 10, 10, 10}[i]
		for range want {
			a := <-got
			if a.err != nil {
				t.Fatal(a.err)
			}
			counts[a.instance]++
			defer a.release()
		}
		if held := tb.Waiting("s1"); held != n-10*(i+1) {
			t.Fatalf("after %d instances, %d held, want %d", i+1, held, n-10*(i+1))
		}
	}
	for id, c := range counts {
		if c != 10 {
			t.Errorf("%s got %d of %d held requests, want 10 (%v)", id, c, n, counts)
		}
	}
}

// TestAcquireSpreadWait: held requests kept for instances that do not
// come get the ones up after SpreadWait.
func TestAcquireSpreadWait(t *testing.T) {
	tb := routing.NewTable()
	tb.SpreadWait = 100 * time.Millisecond
	svc := service("s1", "u-o/a")
	svc.Instances = 2
	tb.PutService(svc)
	got := holdRequests(t, tb, context.Background(), "s1", 4)
	tb.PutInstance(ready("s1", "i1"))
	for range 4 {
		select {
		case a := <-got:
			if a.err != nil || a.instance != "i1" {
				t.Fatalf("%+v", a)
			}
			defer a.release()
		case <-time.After(5 * time.Second):
			t.Fatal("held requests not handed to the one instance up")
		}
	}
	// A request that comes when none is held picks at once.
	if _, release, err := tb.Acquire(context.Background(), "s1", routing.Request{}, func() { t.Error("held with an instance up") }); err != nil {
		t.Fatal(err)
	} else {
		release()
	}
}

// TestAcquireGivesUp: a held request whose context ends leaves the queue,
// and one handed an instance as it gave up gives it back.
func TestAcquireGivesUp(t *testing.T) {
	tb := routing.NewTable()
	tb.PutService(service("s1", "u-o/a"))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, _, err := tb.Acquire(ctx, "s1", routing.Request{}, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the deadline", err)
	}
	if got := tb.Waiting("s1"); got != 0 {
		t.Errorf("%d held after giving up", got)
	}
	// Many give up as the instance arrives: none keeps it busy.
	for range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		got := holdRequests(t, tb, ctx, "s1", 5)
		go cancel()
		tb.PutInstance(ready("s1", "i1"))
		for range 5 {
			if a := <-got; a.err == nil {
				a.release()
			}
		}
		e, release, ok := tb.Pick("s1")
		if !ok || e.Outstanding() != 1 {
			t.Fatalf("outstanding %d after every held request ended, want only this pick", e.Outstanding())
		}
		release()
		tb.DeleteInstance("s1", "i1")
	}
}
