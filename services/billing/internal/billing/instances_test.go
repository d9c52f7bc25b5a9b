package billing_test

import (
	"fmt"
	"maps"
	"reflect"
	"testing"
	"time"

	"github.com/modelport/modelport/services/billing/internal/billing"
)

// t0 is a fixed start for simulated clocks: a whole hour.
var t0 = time.Date(2025, 5, 1, 10, 0, 0, 0, time.UTC)

func at(minutes int) time.Time { return t0.Add(time.Duration(minutes) * time.Minute) }

// iev builds instance events with IDs that sort in the order given.
func iev(instance string, kind billing.InstanceKind, minutes int) billing.InstanceEvent {
	seq++
	return billing.InstanceEvent{EventID: fmt.Sprintf("%08d", seq), Kind: kind, InstanceID: instance, ServiceID: "s1", At: at(minutes)}
}

var seq int

func TestIntervals(t *testing.T) {
	ready, stopped, gone := billing.InstanceReady, billing.InstanceStopped, billing.InstanceGone
	tests := []struct {
		name string
		evs  []billing.InstanceEvent
		want []billing.Interval
	}{
		{name: "none"},
		{name: "ready then stopped",
			evs:  []billing.InstanceEvent{iev("a", ready, 0), iev("a", stopped, 30)},
			want: []billing.Interval{{InstanceID: "a", Start: at(0), End: at(30)}}},
		{name: "still running",
			evs:  []billing.InstanceEvent{iev("a", ready, 5)},
			want: []billing.Interval{{InstanceID: "a", Start: at(5)}}},
		{name: "announced again while running",
			evs:  []billing.InstanceEvent{iev("a", ready, 0), iev("a", ready, 10), iev("a", stopped, 30)},
			want: []billing.Interval{{InstanceID: "a", Start: at(0), End: at(30)}}},
		{name: "stopped twice",
			evs:  []billing.InstanceEvent{iev("a", ready, 0), iev("a", stopped, 30), iev("a", stopped, 31)},
			want: []billing.Interval{{InstanceID: "a", Start: at(0), End: at(30)}}},
		{name: "stopped without ready",
			evs: []billing.InstanceEvent{iev("a", stopped, 30)}},
		{name: "restarted",
			evs:  []billing.InstanceEvent{iev("a", ready, 0), iev("a", stopped, 30), iev("a", ready, 40), iev("a", stopped, 50)},
			want: []billing.Interval{{InstanceID: "a", Start: at(0), End: at(30)}, {InstanceID: "a", Start: at(40), End: at(50)}}},
		{name: "out of order input",
			evs:  []billing.InstanceEvent{iev("a", stopped, 30), iev("b", ready, 5), iev("a", ready, 0)},
			want: []billing.Interval{{InstanceID: "a", Start: at(0), End: at(30)}, {InstanceID: "b", Start: at(5)}}},
		{name: "same second: event ID decides",
			evs:  []billing.InstanceEvent{iev("a", ready, 0), iev("a", stopped, 0)},
			want: []billing.Interval{{InstanceID: "a", Start: at(0), End: at(0)}}},
		{name: "instances apart",
			evs:  []billing.InstanceEvent{iev("a", ready, 0), iev("b", stopped, 10), iev("b", ready, 20)},
			want: []billing.Interval{{InstanceID: "a", Start: at(0)}, {InstanceID: "b", Start: at(20)}}},
		{name: "worker gone ends it",
			evs:  []billing.InstanceEvent{iev("a", ready, 0), iev("a", gone, 40)},
			want: []billing.Interval{{InstanceID: "a", Start: at(0), End: at(40)}}},
		{name: "gone announced again",
			evs:  []billing.InstanceEvent{iev("a", ready, 0), iev("a", gone, 40), iev("a", gone, 41), iev("a", gone, 40)},
			want: []billing.Interval{{InstanceID: "a", Start: at(0), End: at(40)}}},
		{name: "worker comes back after gone",
			evs: []billing.InstanceEvent{iev("a", ready, 0), iev("a", gone, 40), iev("a", ready, 45), iev("a", stopped, 70),
				iev("a", ready, 80)},
			want: []billing.Interval{{InstanceID: "a", Start: at(0), End: at(40)}}},
		{name: "stopped before gone: the earlier end",
			evs:  []billing.InstanceEvent{iev("a", ready, 0), iev("a", gone, 40), iev("a", stopped, 30)},
			want: []billing.Interval{{InstanceID: "a", Start: at(0), End: at(30)}}},
		{name: "gone without ready",
			evs: []billing.InstanceEvent{iev("a", gone, 10), iev("a", ready, 20)}},
		{name: "gone ends one instance only",
			evs:  []billing.InstanceEvent{iev("a", ready, 0), iev("b", ready, 0), iev("a", gone, 40), iev("b", stopped, 90)},
			want: []billing.Interval{{InstanceID: "a", Start: at(0), End: at(40)}, {InstanceID: "b", Start: at(0), End: at(90)}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := billing.Intervals(tc.evs); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Intervals =\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}

func TestSecondsByHour(t *testing.T) {
	h := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Hour) }
	tests := []struct {
		name     string
		ivs      []billing.Interval
		from, to time.Time
		want     map[time.Time]uint64
	}{
		{name: "inside one hour", ivs: []billing.Interval{{Start: at(10), End: at(40)}},
			from: h(0), to: h(5), want: map[time.Time]uint64{h(0): 1800}},
		{name: "across hours", ivs: []billing.Interval{{Start: at(30), End: at(150)}},
			from: h(0), to: h(5), want: map[time.Time]uint64{h(0): 1800, h(1): 3600, h(2): 1800}},
		{name: "running runs to the end of the window", ivs: []billing.Interval{{Start: at(30)}},
			from: h(0), to: at(90), want: map[time.Time]uint64{h(0): 1800, h(1): 1800}},
		{name: "clipped at the start", ivs: []billing.Interval{{Start: at(-90), End: at(30)}},
			from: h(0), to: h(5), want: map[time.Time]uint64{h(0): 1800}},
		{name: "entirely before", ivs: []billing.Interval{{Start: at(-90), End: at(-30)}},
			from: h(0), to: h(5), want: map[time.Time]uint64{}},
		{name: "entirely after", ivs: []billing.Interval{{Start: h(6)}},
			from: h(0), to: h(5), want: map[time.Time]uint64{}},
		{name: "two instances add up", ivs: []billing.Interval{{Start: h(0), End: h(1)}, {Start: h(0)}},
			from: h(0), to: h(1), want: map[time.Time]uint64{h(0): 7200}},
		{name: "seconds, not nanoseconds", ivs: []billing.Interval{{Start: at(0).Add(900 * time.Millisecond), End: at(0).Add(2100 * time.Millisecond)}},
			from: h(0), to: h(1), want: map[time.Time]uint64{h(0): 2}},
		{name: "zero length", ivs: []billing.Interval{{Start: at(5), End: at(5)}},
			from: h(0), to: h(1), want: map[time.Time]uint64{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := billing.SecondsByHour(tc.ivs, tc.from, tc.to); !maps.Equal(got, tc.want) {
				t.Errorf("SecondsByHour = %v, want %v", got, tc.want)
			}
		})
	}
}
