package natsx_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
)

// records returns the events as a spool writes them, one after the other.
func records(t testing.TB, evs ...events.RequestCompletedV1) []byte {
	t.Helper()
	var b []byte
	for _, ev := range evs {
		frame, err := natsx.EncodeRecord(ev)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, frame...)
	}
	return b
}

func eventIDs(evs []events.RequestCompletedV1) []string {
	ids := make([]string, len(evs))
	for i, ev := range evs {
		ids[i] = ev.EventID()
	}
	return ids
}

// drained closes spool, which waits for JetStream to store every event
// in it, and fails unless USAGE then holds each of want once, and nothing
// else, and the spool's directory no segment.
func drained(t *testing.T, s *natstest.Server, spool *natsx.Spool, dir string, want []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := spool.Close(ctx); err != nil {
		t.Fatal(err)
	}
	ids, msgs := usageIDs(t, s)
	if msgs != len(want) || len(ids) != len(want) {
		t.Fatalf("USAGE holds %d messages with %d IDs, want %d", msgs, len(ids), len(want))
	}
	for _, id := range want {
		if _, ok := ids[id]; !ok {
			t.Fatalf("event %s lost", id)
		}
	}
	if left := segments(t, dir); len(left) != 0 {
		t.Fatalf("segments left after every event was stored: %v", left)
	}
}

// openSpool opens a spool in a directory of its own on a JetStream server
// of its own, and returns the segment it begins, to write to.
func openSpool(t *testing.T) (s *natstest.Server, spool *natsx.Spool, dir, segment string) {
	t.Helper()
	s = natstest.New(t)
	bus := s.Bus(t, access.Router)
	dir = t.TempDir()
	spool, err := natsx.OpenSpool(dir, bus.JS, 0, quiet)
	if err != nil {
		t.Fatal(err)
	}
	segs := segments(t, dir)
	if len(segs) != 1 {
		t.Fatalf("segments %v, want the one written to", segs)
	}
	return s, spool, dir, segs[0]
}

// TestSpoolReservesASegmentWhenItBegins: the segment a spool writes to has
// its disk blocks allocated when it begins, so a full disk is an error
// then, not a SIGBUS on a later write through the mapping.
func TestSpoolReservesASegmentWhenItBegins(t *testing.T) {
	_, spool, _, seg := openSpool(t)
	t.Cleanup(func() { natsx.KillSpool(spool) })
	info, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	blocks := info.Sys().(*syscall.Stat_t).Blocks * 512
	if info.Size() != natsx.SpoolSegmentSize || blocks < natsx.SpoolSegmentSize {
		t.Fatalf("a new segment is %d bytes long with %d bytes of blocks, want %d of each", info.Size(), blocks, natsx.SpoolSegmentSize)
	}
}

// TestSpoolRecoversASegmentWithAZeroTail: a segment its spool had no time
// to seal holds its records, then the zeros of its reserved length. Its
// records are forwarded with no word of a torn end; a record cut short
// before the zeros is dropped as torn, and those before it forwarded.
func TestSpoolRecoversASegmentWithAZeroTail(t *testing.T) {
	evs := []events.RequestCompletedV1{usageEvent(1), usageEvent(2), usageEvent(3)}
	whole := records(t, evs...)
	last := records(t, evs[2])
	tail := make([]byte, 8192)
	for _, tc := range []struct {
		name    string
		segment []byte
		want    []events.RequestCompletedV1
		torn    bool
	}{
		{"records then zeros", slices.Concat(whole, tail), evs, false},
		{"records to the end", whole, evs, false},
		{"records, zeros shorter than a record head", slices.Concat(whole, tail[:5]), evs, false},
		{"a record cut short, then zeros", slices.Concat(whole[:len(whole)-len(last)/2], tail), evs[:2], true},
		{"a record head cut short, then zeros", slices.Concat(whole[:len(whole)-len(last)+3], tail), evs[:2], true},
		{"zeros where a record begins, its end written", slices.Concat(whole[:len(whole)-len(last)], tail[:64], last[64:], tail), evs[:2], true},
		{"a head of zeros with a body", slices.Concat(whole[:len(whole)-len(last)], tail[:8], last[8:]), evs[:2], true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids, size, torn, err := natsx.ScanSegment(bytes.NewReader(tc.segment))
			if err != nil {
				t.Fatal(err)
			}
			if want := eventIDs(tc.want); !slices.Equal(ids, want) || torn != tc.torn {
				t.Fatalf("read %d events (torn %v), want %d (torn %v)", len(ids), torn, len(want), tc.torn)
			}
			if want := int64(len(records(t, tc.want...))); size != want {
				t.Fatalf("records of %d bytes, want %d", size, want)
			}

			// A spool opened on a directory that holds the segment.
			s := natstest.New(t)
			bus := s.Bus(t, access.Router)
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%020d.log", 7)), tc.segment, 0o640); err != nil {
				t.Fatal(err)
			}
			// Read once Close has stopped the spool's goroutines.
			var log bytes.Buffer
			spool, err := natsx.OpenSpool(dir, bus.JS, 0, slog.New(slog.NewTextHandler(&log, nil)))
			if err != nil {
				t.Fatal(err)
			}
			drained(t, s, spool, dir, eventIDs(tc.want))
			if warned := strings.Contains(log.String(), "cut short"); warned != tc.torn {
				t.Fatalf("a torn end reported %v, want %v; the log:\n%s", warned, tc.torn, log.String())
			}
		})
	}
}

// TestSpoolRefusesASegmentItCannotRead: a segment the disk fails to read
// (here, a directory where a segment should be) stops a spool from
// opening on it, rather than be taken for a torn end and deleted unread.
func TestSpoolRefusesASegmentItCannotRead(t *testing.T) {
	s := natstest.New(t)
	bus := s.Bus(t, access.Router)
	dir := t.TempDir()
	unreadable := filepath.Join(dir, fmt.Sprintf("%020d.log", 3))
	if err := os.Mkdir(unreadable, 0o750); err != nil {
		t.Fatal(err)
	}
	spool, err := natsx.OpenSpool(dir, bus.JS, 0, quiet)
	if err == nil {
		natsx.KillSpool(spool)
		t.Fatal("a spool opened on a segment it could not read")
	}
	if !strings.Contains(err.Error(), unreadable) {
		t.Fatalf("the refusal %q does not name the segment", err)
	}
	if _, err := os.Stat(unreadable); err != nil {
		t.Fatalf("the segment: %v", err)
	}
	// The directory is let go of for the next try.
	if err := os.Remove(unreadable); err != nil {
		t.Fatal(err)
	}
	spool, err = natsx.OpenSpool(dir, bus.JS, 0, quiet)
	if err != nil {
		t.Fatal(err)
	}
	natsx.KillSpool(spool)
}

// bigEvent is a usage event of about size bytes.
func bigEvent(i, size int) events.RequestCompletedV1 {
	ev := usageEvent(i)
	ev.RequestID = fmt.Sprintf("req-%d-%s", i, strings.Repeat("x", size))
	return ev
}

// TestSpoolWritesAcrossSegments: events that fill segments, one longer
// than the room a segment has left and one longer than a whole segment
// are each forwarded once; a sealed segment holds only its records, and
// every segment is removed once its events are stored.
func TestSpoolWritesAcrossSegments(t *testing.T) {
	const segment = 64 << 10
	defer natsx.SetSpoolSegmentSize(segment)()
	s := natstest.New(t)
	dir := t.TempDir()
	var written []events.RequestCompletedV1
	publish := func(spool *natsx.Spool, evs ...events.RequestCompletedV1) {
		t.Helper()
		for _, ev := range evs {
			if err := spool.Publish(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
			written = append(written, ev)
		}
	}
	many := func(from int) []events.RequestCompletedV1 {
		var evs []events.RequestCompletedV1
		for i := from; i < from+300; i++ { // about three segments
			evs = append(evs, usageEvent(i))
		}
		return evs
	}

	// JetStream away: everything stays in the segments.
	cut := s.Bus(t, access.Router)
	cut.Conn.Close()
	first, err := natsx.OpenSpool(dir, cut.JS, 0, quiet)
	if err != nil {
		t.Fatal(err)
	}
	publish(first, many(0)...)
	// Fits a segment of its own, not one that holds any other event.
	publish(first, bigEvent(1000, segment-1200))
	publish(first, usageEvent(1001))
	publish(first, bigEvent(1002, 3*segment))
	publish(first, many(2000)...)
	segs := segments(t, dir)
	if len(segs) < 6 {
		t.Fatalf("%d events in %d segments of %d bytes", len(written), len(segs), segment)
	}
	var inSegments []string
	for i, seg := range segs {
		ids, size, torn, err := natsx.ReadSegment(seg)
		if err != nil {
			t.Fatal(err)
		}
		info, err := os.Stat(seg)
		if err != nil {
			t.Fatal(err)
		}
		if torn || len(ids) == 0 {
			t.Fatalf("segment %s: %d events, torn %v", seg, len(ids), torn)
		}
		if i < len(segs)-1 && size != info.Size() {
			t.Fatalf("sealed segment %s: %d bytes, %d of them records; want only its records", seg, info.Size(), size)
		}
		if size > segment && len(ids) > 1 {
			t.Fatalf("segment %s: %d events in %d bytes, longer than a segment", seg, len(ids), size)
		}
		inSegments = append(inSegments, ids...)
	}
	if !slices.Equal(inSegments, eventIDs(written)) {
		t.Fatalf("segments hold %d events, want the %d written, in order", len(inSegments), len(written))
	}
	natsx.KillSpool(first)

	// The next spool forwards them, and writes more across segments
	// meanwhile.
	bus := s.Bus(t, access.Router)
	second, err := natsx.OpenSpool(dir, bus.JS, 0, quiet)
	if err != nil {
		t.Fatal(err)
	}
	publish(second, many(3000)...)
	publish(second, bigEvent(4000, 2*segment), usageEvent(4001))
	drained(t, s, second, dir, eventIDs(written))
}

// TestSpoolRefusesAnEventItsMappingFaultsOn: an I/O error behind the
// segment's mapping (here, its file cut short under it) reaches Publish as
// SIGBUS; the event is refused as Unavailable, the process goes on, and
// the next event goes to a new segment. Every event taken is stored once.
func TestSpoolRefusesAnEventItsMappingFaultsOn(t *testing.T) {
	s, spool, dir, seg := openSpool(t)
	taken := []events.RequestCompletedV1{usageEvent(1)}
	if err := spool.Publish(context.Background(), taken[0]); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(seg, 0); err != nil {
		t.Fatal(err)
	}
	if err := spool.Publish(context.Background(), usageEvent(2)); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("publish into a mapping past its file's end: %v, want Unavailable", err)
	}
	taken = append(taken, usageEvent(3))
	if err := spool.Publish(context.Background(), taken[1]); err != nil {
		t.Fatalf("publish after a fault: %v", err)
	}
	drained(t, s, spool, dir, eventIDs(taken))
}

// FuzzReadSegment reads any bytes as a segment: it never panics, never
// takes more bytes for records than there are, and a segment read whole
// reads the same with zeros after it (the reserved length of one its
// process did not seal).
func FuzzReadSegment(f *testing.F) {
	whole := records(f, usageEvent(1), usageEvent(2))
	f.Add([]byte{})
	f.Add(whole)
	f.Add(append(slices.Clone(whole), make([]byte, 100)...))
	f.Add(whole[:len(whole)-7])
	f.Add(whole[:11])
	f.Add(make([]byte, 8))
	f.Fuzz(func(t *testing.T, b []byte) {
		ids, size, torn, err := natsx.ScanSegment(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if size > int64(len(b)) {
			t.Fatalf("%d bytes of records in %d bytes", size, len(b))
		}
		if torn {
			return
		}
		padded, _, torn, err := natsx.ScanSegment(bytes.NewReader(append(slices.Clone(b), make([]byte, 4096)...)))
		if err != nil || torn || !slices.Equal(padded, ids) {
			t.Fatalf("with zeros after it: %d events (torn %v, %v), want the %d without", len(padded), torn, err, len(ids))
		}
	})
}
