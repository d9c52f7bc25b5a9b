package clickhouse

import (
	"fmt"
	"slices"
	"strings"
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
	id := func(c string) string { return "0196ce22-3bd0-7f09-b34b-7a1e85d2c6f" + c }
	a, b, c, d, e := ev(id("a")), ev(id("b")), ev(id("c")), ev(id("d")), ev(id("e"))

	first := r.claim([]events.RequestCompletedV1{a, b, a})
	if got, want := ids(first), []string{id("a"), id("b")}; !slices.Equal(got, want) {
		t.Fatalf("claim = %v, want %v: each ID once", got, want)
	}
	// Another insert at the same moment leaves out what the first stores.
	second := r.claim([]events.RequestCompletedV1{b, c})
	if got, want := ids(second), []string{id("c")}; !slices.Equal(got, want) {
		t.Fatalf("claim while b is being stored = %v, want %v", got, want)
	}
	// The first insert fails: its events may be claimed again.
	r.release(first)
	r.stored(second)
	if got, want := ids(r.claim([]events.RequestCompletedV1{a, b, c})), []string{id("a"), id("b")}; !slices.Equal(got, want) {
		t.Fatalf("claim after a failed insert = %v, want %v (c is stored)", got, want)
	}
	r.stored([]events.RequestCompletedV1{a, b})
	if got := r.claim([]events.RequestCompletedV1{a, b, c}); len(got) != 0 {
		t.Fatalf("claim of stored events = %v, want none", ids(got))
	}
	// Beyond its capacity (3), the oldest are forgotten: c, then a.
	r.stored(r.claim([]events.RequestCompletedV1{d, e}))
	if got, want := ids(r.claim([]events.RequestCompletedV1{a, b, c, d, e})), []string{id("a"), id("c")}; !slices.Equal(got, want) {
		t.Fatalf("claim after two more = %v, want %v", got, want)
	}
	// An ID that is not a lower-case UUID is never remembered (billing
	// refuses such events before they reach the store): always fresh.
	odd := ev(strings.ToUpper(id("a")))
	r.stored(r.claim([]events.RequestCompletedV1{odd}))
	if got := r.claim([]events.RequestCompletedV1{odd, odd}); len(got) != 2 {
		t.Fatalf("claim of an ID that is no lower-case UUID = %v, want it twice", ids(got))
	}
}

func TestKeyOf(t *testing.T) {
	const id = "0196ce22-3bd0-7f09-b34b-7a1e85d2c6f4"
	k, ok := keyOf(id)
	if !ok {
		t.Fatalf("keyOf(%q) refused", id)
	}
	if got := fmt.Sprintf("%x", k[:]); got != strings.ReplaceAll(id, "-", "") {
		t.Fatalf("keyOf(%q) = %s", id, got)
	}
	for _, bad := range []string{"", "a", strings.ToUpper(id), id + "0", id[:35], strings.Replace(id, "-", "0", 1), strings.Replace(id, "4", "g", 1)} {
		if _, ok := keyOf(bad); ok {
			t.Errorf("keyOf(%q) accepted", bad)
		}
	}
}
