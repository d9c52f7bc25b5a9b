package kvstore_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/kvstore"
	"github.com/modelport/modelport/services/scaler/internal/scale"
)

// Finding 7: every placement ever made leaves a delete marker in the
// placements bucket, which nothing purged; the leading scaler now purges
// them once they are older than the retention (here: any age).
func TestReviewPlacementMarkersPurged(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	bus := natstest.New(t).Bus(t, access.Scaler)
	st := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketWorkers), bus.KV(state.BucketPlacements), bus.KV(state.BucketInstances), bus.KV(state.BucketLoad))
	for i := range 10 {
		p := state.Placement{InstanceID: fmt.Sprintf("i%d", i), ServiceID: "s1", WorkerID: "w1"}
		if err := st.Place(ctx, p); err != nil {
			t.Fatal(err)
		}
		if err := st.Unplace(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := scale.New(st, bus.Publisher, log).ReconcileAll(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.PurgeMarkers(ctx, -1); err != nil {
		t.Fatal(err)
	}
	info, err := bus.KV(state.BucketPlacements).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := info.Values(); n != 0 {
		t.Fatalf("the placements bucket holds %d entries for 10 placements made and removed", n)
	}
}

// Markers younger than the retention stay, so a watcher that reconnects
// still learns of the removal.
func TestRecentMarkersKept(t *testing.T) {
	ctx := context.Background()
	bus := natstest.New(t).Bus(t, access.Scaler)
	st := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketWorkers), bus.KV(state.BucketPlacements), bus.KV(state.BucketInstances), bus.KV(state.BucketLoad))
	p := state.Placement{InstanceID: "i1", ServiceID: "s1", WorkerID: "w1"}
	if err := st.Place(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := st.Unplace(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := st.PurgeMarkers(ctx, state.MarkerRetention); err != nil {
		t.Fatal(err)
	}
	info, err := bus.KV(state.BucketPlacements).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := info.Values(); n != 1 {
		t.Fatalf("the placements bucket holds %d entries, want the recent marker", n)
	}
}

// Reconciling one service reads only its own keys.
func TestServiceRecordsByPrefix(t *testing.T) {
	ctx := context.Background()
	bus := natstest.New(t).Bus(t, access.Scaler)
	st := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketWorkers), bus.KV(state.BucketPlacements), bus.KV(state.BucketInstances), bus.KV(state.BucketLoad))
	for _, svc := range []string{"s1", "s2"} {
		for i := range 3 {
			if err := st.Place(ctx, state.Placement{InstanceID: fmt.Sprintf("i%d", i), ServiceID: svc, WorkerID: "w1"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	got, err := st.ServicePlacements(ctx, "s2")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].ServiceID != "s2" {
		t.Fatalf("placements of s2: %+v", got)
	}
	if _, err := st.ServicePlacements(ctx, "s*"); err == nil {
		t.Fatal("a wildcard service ID was taken")
	}
}
