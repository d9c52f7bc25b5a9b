package kvstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/kvstore"
)

// A router whose clock is an hour behind still reports fresh load: the
// report's time is the server's.
func TestLoadsUseTheServersTime(t *testing.T) {
	ctx := context.Background()
	// The store runs as the scaler's NATS identity; the test reports load
	// as the test admin, as a router would.
	ns := natstest.New(t)
	bus := ns.Bus(t, access.Scaler)
	loads := ns.Bus(t, natstest.Admin).KV(state.BucketLoad)
	skewed := state.Load{ServiceID: "s1", RouterID: "r1", InFlight: 3, ReportedAt: time.Now().Add(-time.Hour)}
	if err := state.Put(ctx, loads, state.LoadKey("s1", "r1"), skewed); err != nil {
		t.Fatal(err)
	}
	st := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketWorkers), bus.KV(state.BucketPlacements), bus.KV(state.BucketInstances), bus.KV(state.BucketLoad))
	got, err := st.Loads(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].InFlight != 3 {
		t.Fatalf("loads %+v, want the one report", got)
	}
	if age := time.Since(got[0].ReportedAt); age < 0 || age > time.Minute {
		t.Fatalf("report is %v old, want the server's time of the write", age)
	}
}
