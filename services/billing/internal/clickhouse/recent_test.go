package clickhouse

import (
	"slices"
	"testing"

	"github.com/modelport/modelport/libs/events"
)

func TestRecentIDs(t *testing.T) {
	ev := func(id string) events.RequestCompletedV1 {
		return events.RequestCompletedV1{Meta: events.Meta{ID: id}}
	}
	ids := func(evs []events.RequestCompletedV1) []string {
		var out []string
		for _, e := range evs {
			out = append(out, e.ID)
		}
		return out
	}
	r := newRecentIDs(3)
	a, b, c, d, e := ev("a"), ev("b"), ev("c"), ev("d"), ev("e")

	first := r.claim([]events.RequestCompletedV1{a, b, a})
	if got, want := ids(first), []string{"a", "b"}; !slices.Equal(got, want) {
		t.Fatalf("claim = %v, want %v: each ID once", got, want)
	}
	// Another insert at the same moment leaves out what the first stores.
	second := r.claim([]events.RequestCompletedV1{b, c})
	if got, want := ids(second), []string{"c"}; !slices.Equal(got, want) {
		t.Fatalf("claim while b is being stored = %v, want %v", got, want)
	}
	// The first insert fails: its events may be claimed again.
	r.release(first)
	r.stored(second)
	if got, want := ids(r.claim([]events.RequestCompletedV1{a, b, c})), []string{"a", "b"}; !slices.Equal(got, want) {
		t.Fatalf("claim after a failed insert = %v, want %v (c is stored)", got, want)
	}
	r.stored([]events.RequestCompletedV1{a, b})
	if got := r.claim([]events.RequestCompletedV1{a, b, c}); len(got) != 0 {
		t.Fatalf("claim of stored events = %v, want none", ids(got))
	}
	// Beyond its capacity (3), the oldest are forgotten: c, then a.
	r.stored(r.claim([]events.RequestCompletedV1{d, e}))
	if got, want := ids(r.claim([]events.RequestCompletedV1{a, b, c, d, e})), []string{"a", "c"}; !slices.Equal(got, want) {
		t.Fatalf("claim after two more = %v, want %v", got, want)
	}
}
