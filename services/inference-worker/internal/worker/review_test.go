package worker_test

// Reproductions of the control-plane review's worker findings.

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/inference-worker/internal/engine"
	"github.com/modelport/modelport/services/inference-worker/internal/worker"
)

var errOutage = errors.New("nats: no responders available for request")

// failFirst refuses the first n events of type T.
func failFirst[T events.Event](n int) func(events.Event) error {
	var left atomic.Int64
	left.Store(int64(n))
	return func(ev events.Event) error {
		if _, ok := ev.(T); ok && left.Add(-1) >= 0 {
			return errOutage
		}
		return nil
	}
}

// Finding 1(a): a release handled before its placement is a no-op, and the
// placement, redelivered later, starts an instance nothing will release.
func TestReviewReleaseBeforePlacement(t *testing.T) {
	f := newFixture(t, 2)
	if err := f.w.StopInstance(context.Background(), release("i-1", "scaled down to 0")); err != nil {
		t.Fatal(err)
	}
	_ = f.start(placement("i-1"))
	if got := f.eng.started(); len(got) != 0 {
		t.Fatalf("started %d instances for a placement released before it arrived", len(got))
	}
}

// Finding 2: a worker without room refuses a placement as retryable, so it
// is redelivered for ever while the scaler counts it as placed.
func TestReviewFullWorkerDoesNotRetryForEver(t *testing.T) {
	f := newFixture(t, 1)
	if err := f.start(placement("i-1")); err != nil {
		t.Fatal(err)
	}
	if err := f.start(placement("i-2")); errs.KindOf(err) == errs.Unavailable {
		t.Fatalf("a placement the full worker cannot take: %v, retried for ever", err)
	}
}

// Finding 3: a stop whose announcement failed frees the slot first; the
// redelivered release finds nothing and InstanceStoppedV1 is never sent.
func TestReviewStopAnnouncedBeforeSlotFreed(t *testing.T) {
	f := newFixture(t, 1, worker.WithDrain(0))
	if err := f.start(placement("i-1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "i-1 is ready", func() bool { return len(of[events.InstanceReadyV1](f.pub)) == 1 })
	f.pub.failing(failFirst[events.InstanceStoppedV1](1))
	if err := f.w.StopInstance(context.Background(), release("i-1", "scaled down to 0")); err == nil {
		t.Fatal("the stop's announcement failed, yet the release was acknowledged")
	}
	if got := f.running(t); got != 1 {
		t.Errorf("running %d after an unannounced stop, want the slot held until it is announced", got)
	}
	_ = f.w.StopInstance(context.Background(), release("i-1", "scaled down to 0")) // redelivered
	if got := of[events.InstanceStoppedV1](f.pub); len(got) != 1 {
		t.Fatalf("stopped events %+v after the redelivered release, want one", got)
	}
}

// Finding 3: a failed InstanceFailedV1 is only logged: the scaler never
// learns the instance is gone.
func TestReviewFailureAnnouncedUntilStored(t *testing.T) {
	f := newFixture(t, 1, worker.WithAnnounceRetry(10*time.Millisecond))
	f.pub.failing(failFirst[events.InstanceFailedV1](3))
	if err := f.start(placement("i-1")); err != nil {
		t.Fatal(err)
	}
	f.eng.started()[0].send(engine.Event{State: engine.Failed, Failure: &engine.Failure{Reason: "crashed", ExitCode: 1}})
	eventually(t, "the failure is announced", func() bool { return len(of[events.InstanceFailedV1](f.pub)) == 1 })
}

// Finding 3: a failed InstanceReadyV1 is only logged: billing never starts
// the instance's time and the deployer's count stays stale.
func TestReviewReadyAnnouncedUntilStored(t *testing.T) {
	f := newFixture(t, 1, worker.WithAnnounceRetry(10*time.Millisecond))
	f.pub.failing(failFirst[events.InstanceReadyV1](3))
	if err := f.start(placement("i-1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the instance is announced ready", func() bool { return len(of[events.InstanceReadyV1](f.pub)) == 1 })
	if got := f.st.status("s1", "i-1"); got != state.InstanceReady {
		t.Errorf("record %q, want ready", got)
	}
}

// A ready instance that fails holds its slot until both its failure and
// its stop are announced: the scaler sees it held, not a phantom, and
// billing's time always ends.
func TestFailedInstanceHeldUntilAnnounced(t *testing.T) {
	f := newFixture(t, 1, worker.WithAnnounceRetry(10*time.Millisecond))
	if err := f.start(placement("i-1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "i-1 is ready", func() bool { return len(of[events.InstanceReadyV1](f.pub)) == 1 })
	release := make(chan struct{})
	f.pub.failing(func(ev events.Event) error {
		if _, ok := ev.(events.InstanceStoppedV1); ok {
			select {
			case <-release:
			default:
				return errOutage
			}
		}
		return nil
	})
	f.eng.started()[0].send(engine.Event{State: engine.Failed, Failure: &engine.Failure{Reason: "crashed", ExitCode: 1}})
	eventually(t, "the failure is announced", func() bool { return len(of[events.InstanceFailedV1](f.pub)) == 1 })
	if got := f.running(t); got != 1 {
		t.Fatalf("running %d while the stop is not announced, want the slot held", got)
	}
	close(release)
	eventually(t, "the stop is announced and the slot freed", func() bool {
		return len(of[events.InstanceStoppedV1](f.pub)) == 1 && f.running(t) == 0
	})
}

// A stop whose announcement is still pending at shutdown is announced
// then.
func TestShutdownAnnouncesPendingStop(t *testing.T) {
	f := newFixture(t, 1, worker.WithDrain(0))
	if err := f.start(placement("i-1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "i-1 is ready", func() bool { return len(of[events.InstanceReadyV1](f.pub)) == 1 })
	f.pub.failing(failFirst[events.InstanceStoppedV1](1))
	if err := f.w.StopInstance(context.Background(), release("i-1", "scaled down to 0")); err == nil {
		t.Fatal("want the failed announcement reported")
	}
	f.w.Shutdown(context.Background(), "worker stopped")
	got := of[events.InstanceStoppedV1](f.pub)
	if len(got) != 1 || got[0].Reason != "scaled down to 0" {
		t.Fatalf("stopped events %+v, want the pending one", got)
	}
}
