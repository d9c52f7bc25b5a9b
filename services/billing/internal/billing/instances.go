package billing

import (
	"cmp"
	"slices"
	"strings"
	"time"
)

// Interval is one stretch of an instance taking traffic: from a ready
// event to the first event after it that ends it (stopped, gone, failed
// or lost). End is zero while the instance still runs.
type Interval struct {
	InstanceID string
	Start, End time.Time
}

// Intervals turns instance events into intervals, instance by instance, in
// the order of time and then event ID (UUIDv7s, so time-ordered too). An
// instance runs from a ready event to the next event that ends it
// (stopped, gone, failed or lost): a ready while it runs (a worker
// announcing it again) and an end while it does not change nothing, so a
// repeated announcement of either counts once. Gone is final: the scaler
// has replaced the instance, so nothing after it runs again (a worker that
// comes back announcing it ready, then stopping it). The result is ordered
// by instance and start.
func Intervals(evs []InstanceEvent) []Interval {
	evs = slices.Clone(evs)
	slices.SortStableFunc(evs, func(a, b InstanceEvent) int {
		return cmp.Or(strings.Compare(a.InstanceID, b.InstanceID), a.At.Compare(b.At), strings.Compare(a.EventID, b.EventID))
	})
	var out []Interval
	running, gone := false, false
	for i, ev := range evs {
		if i > 0 && ev.InstanceID != evs[i-1].InstanceID {
			running, gone = false, false
		}
		switch {
		case gone:
		case ev.Kind == InstanceReady && !running:
			out = append(out, Interval{InstanceID: ev.InstanceID, Start: ev.At})
			running = true
		case ev.Kind.ends() && running:
			out[len(out)-1].End = ev.At
			running = false
		}
		if ev.Kind == InstanceGone {
			gone = true
		}
	}
	return out
}

// SecondsByHour returns the whole seconds of instance time in [from, to)
// per UTC hour: each interval clipped to the window, one still running
// counted up to to. Times are taken to the second, as ClickHouse stores
// them. Hours without instance time are absent.
func SecondsByHour(ivs []Interval, from, to time.Time) map[time.Time]uint64 {
	out := map[time.Time]uint64{}
	lo, hi := from.Unix(), to.Unix()
	for _, iv := range ivs {
		start, end := max(iv.Start.Unix(), lo), hi
		if !iv.End.IsZero() {
			end = min(iv.End.Unix(), hi)
		}
		for h := start - floorMod(start, 3600); h < end; h += 3600 {
			piece := min(end, h+3600) - max(start, h)
			if piece > 0 {
				out[time.Unix(h, 0).UTC()] += uint64(piece)
			}
		}
	}
	return out
}

// floorMod is a mod b, never negative.
func floorMod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}
