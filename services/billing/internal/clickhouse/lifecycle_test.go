package clickhouse_test

import (
	"context"
	"maps"
	"reflect"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

func instanceEvent(kind billing.InstanceKind, instance string, at time.Time) billing.InstanceEvent {
	return billing.InstanceEvent{EventID: events.NewMeta().ID, Kind: kind, InstanceID: instance, ServiceID: "svc-life", WorkerID: "w1", At: at}
}

func TestLifecycle(t *testing.T) {
	s, conn, db := open(t)
	ctx := context.Background()
	m := func(n int) time.Time { return hour0.Add(time.Duration(n) * time.Minute) }
	ready, stopped, gone := billing.InstanceReady, billing.InstanceStopped, billing.InstanceGone
	evs := []billing.InstanceEvent{
		instanceEvent(ready, "a", m(0)), instanceEvent(ready, "a", m(20)), instanceEvent(stopped, "a", m(75)),
		instanceEvent(ready, "a", m(130)), // runs until the deletion
		instanceEvent(ready, "b", m(10)), instanceEvent(stopped, "b", m(40)),
		instanceEvent(stopped, "c", m(5)), // never ready
		// d's worker dies: the scaler announces the loss twice; the worker
		// comes back, announces d ready again and stops it. Only 0-50 runs.
		instanceEvent(ready, "d", m(0)), instanceEvent(gone, "d", m(50)), instanceEvent(gone, "d", m(55)),
		instanceEvent(ready, "d", m(60)), instanceEvent(stopped, "d", m(70)),
		instanceEvent(gone, "e", m(7)), instanceEvent(ready, "e", m(8)), // gone before ready: never runs
	}
	if err := s.InsertInstanceEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	// A redelivered batch and a duplicate within one.
	if err := s.InsertInstanceEvents(ctx, []billing.InstanceEvent{evs[0], evs[2], evs[2]}); err != nil {
		t.Fatal(err)
	}
	deletedAt := m(150)
	deletion := billing.ServiceEvent{EventID: events.NewMeta().ID, Kind: billing.ServiceDeleted, ServiceID: "svc-life", OwnerID: "a11ce0000001", At: deletedAt}
	later := deletion
	later.EventID, later.At = events.NewMeta().ID, m(400) // a second deletion event: the first counts
	created := billing.ServiceEvent{EventID: events.NewMeta().ID, Kind: billing.ServiceCreated, ServiceID: "svc-life", OwnerID: "a11ce0000001",
		Name: "chat", AccessName: "u-a11ce0000001/chat", BaseModel: "qwen2.5-7b-instruct", Task: "text-generation",
		BillingMethod: state.BillingPerInstanceHour, At: m(-5)}
	if err := s.InsertServiceEvents(ctx, []billing.ServiceEvent{created, deletion, later, created}); err != nil {
		t.Fatal(err)
	}

	lc, err := s.Lifecycle(ctx, "svc-life", farPast, m(1000))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(lc.Instances), len(evs); got != want {
		t.Fatalf("Lifecycle has %d instance events, want %d (each event ID once)", got, want)
	}
	for i := 1; i < len(lc.Instances); i++ {
		if lc.Instances[i].At.Before(lc.Instances[i-1].At) {
			t.Errorf("instance events out of order: %v before %v", lc.Instances[i-1].At, lc.Instances[i].At)
		}
	}
	if !lc.DeletedAt.Equal(deletedAt) {
		t.Errorf("DeletedAt = %v, want %v", lc.DeletedAt, deletedAt)
	}
	before, err := s.Lifecycle(ctx, "svc-life", farPast, m(30))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(before.Instances), 7; got != want {
		t.Errorf("events before minute 30 = %d, want %d", got, want)
	}
	none, err := s.Lifecycle(ctx, "svc-other", farPast, m(1000))
	if err != nil {
		t.Fatal(err)
	}
	if len(none.Instances) != 0 || !none.DeletedAt.IsZero() {
		t.Errorf("unknown service's lifecycle = %+v, want empty", none)
	}

	t.Run("instance_intervals view agrees with billing.Intervals", func(t *testing.T) {
		rows, err := conn.Query(ctx, "SELECT instance_id, ready_at, stopped_at FROM "+db+".instance_intervals WHERE service_id = 'svc-life' ORDER BY instance_id, ready_at")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var got []billing.Interval
		for rows.Next() {
			var iv billing.Interval
			if err := rows.Scan(&iv.InstanceID, &iv.Start, &iv.End); err != nil {
				t.Fatal(err)
			}
			iv.Start = iv.Start.UTC()
			if iv.End.Unix() == 0 {
				iv.End = time.Time{}
			} else {
				iv.End = iv.End.UTC()
			}
			got = append(got, iv)
		}
		want := billing.Intervals(lc.Instances)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("instance_intervals =\n%+v\nbilling.Intervals =\n%+v", got, want)
		}
	})
	t.Run("instance_hourly view agrees with billing.SecondsByHour", func(t *testing.T) {
		rows, err := conn.Query(ctx, "SELECT hour, instance_seconds FROM "+db+".instance_hourly WHERE service_id = 'svc-life'")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		got := map[time.Time]uint64{}
		for rows.Next() {
			var h time.Time
			var secs uint64
			if err := rows.Scan(&h, &secs); err != nil {
				t.Fatal(err)
			}
			got[h.UTC()] = secs
		}
		want := billing.SecondsByHour(billing.Intervals(lc.Instances), time.Unix(0, 0), deletedAt)
		if !maps.Equal(got, want) {
			t.Errorf("instance_hourly = %v\nbilling.SecondsByHour = %v", got, want)
		}
		// a: 0-75 and 130-150, b: 10-40, d: 0-50 (its worker died).
		var total uint64
		for _, s := range want {
			total += s
		}
		if total != (75+20+30+50)*60 {
			t.Errorf("instance seconds = %d, want %d", total, (75+20+30+50)*60)
		}
	})
	t.Run("services", func(t *testing.T) {
		var name, method string
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT any(name), any(billing_method), uniqExact(event_id) FROM "+db+".services WHERE service_id = 'svc-life'").Scan(&name, &method, &n); err != nil {
			t.Fatal(err)
		}
		if name != "chat" || method != state.BillingPerInstanceHour || n != 1 {
			t.Errorf("services row: name %q, billing_method %q, %d events", name, method, n)
		}
	})
}

// TestUpgradeEndsIntervalsAtGone runs migration 7 over a database whose
// instance_intervals is an older view, with instance_hourly built on it:
// afterwards an instance whose worker died stops at the loss.
func TestUpgradeEndsIntervalsAtGone(t *testing.T) {
	s, conn, db := open(t)
	ctx := context.Background()
	m := func(n int) time.Time { return hour0.Add(time.Duration(n) * time.Minute) }
	evs := []billing.InstanceEvent{
		instanceEvent(billing.InstanceReady, "a", m(0)),
		instanceEvent(billing.InstanceGone, "a", m(40)),
		instanceEvent(billing.InstanceStopped, "a", m(70)), // the worker came back
	}
	for i := range evs {
		evs[i].ServiceID = "svc-up"
	}
	if err := s.InsertInstanceEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	// An older billing: migrations 1 to 6 recorded, another
	// instance_intervals in place.
	for _, stmt := range []string{
		"DROP TABLE " + db + ".instance_intervals",
		"CREATE VIEW " + db + ".instance_intervals AS SELECT service_id, instance_id, occurred_at AS ready_at, toDateTime(0) AS stopped_at FROM " + db + ".instance_events WHERE 0",
		"DROP TABLE " + db + ".schema_migrations",
		"CREATE TABLE " + db + ".schema_migrations (version UInt32, name String, applied_at DateTime DEFAULT now()) ENGINE = MergeTree() ORDER BY version",
	} {
		if err := conn.Exec(ctx, stmt); err != nil {
			t.Fatalf("%v\n%s", err, stmt)
		}
	}
	rec, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".schema_migrations (version, name)")
	if err != nil {
		t.Fatal(err)
	}
	for v, name := range []string{"usage_events", "usage_hourly", "instance_events", "services", "prices", "cost_views"} {
		if err := rec.Append(uint32(v+1), name); err != nil {
			t.Fatal(err)
		}
	}
	if err := rec.Send(); err != nil {
		t.Fatal(err)
	}
	seconds := func() uint64 {
		t.Helper()
		var n uint64
		if err := conn.QueryRow(ctx, "SELECT sum(instance_seconds) FROM "+db+".instance_hourly WHERE service_id = 'svc-up'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := seconds(); got != 0 {
		t.Fatalf("instance_hourly over the older view = %d s, want 0", got)
	}
	for range 2 {
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("Migrate: %v", err)
		}
		if got, want := seconds(), uint64(40*60); got != want {
			t.Errorf("instance_hourly after the upgrade = %d s, want %d (up to the worker's loss)", got, want)
		}
	}
}
