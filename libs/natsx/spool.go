package natsx

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// A Spool publishes events the way Publisher does, but Publish returns as
// soon as the event is written to a log on local disk; a goroutine of its
// own forwards what the log holds to JetStream, in batches (an idle one
// waits a few milliseconds for more events before it sends), and a segment
// of the log is deleted once JetStream has stored every event in it.
//
// The segment appended to is a file whose blocks are reserved on disk when
// it begins (SpoolSegmentSize, or one event's length where that is more)
// and which is mapped into memory, shared with the file: Publish copies an
// event into the mapping, with no system call. A full disk therefore
// fails when a segment begins, not while events are written. A sealed
// segment is cut to the length of its events. The mapping's pages, made
// present when the segment begins, count in the process's resident
// memory: one segment's length, file-backed pages the kernel writes back
// to the file.
//
// What Publish has returned for is never lost to the process ending,
// however it ends (SIGKILL included): a write into a shared mapping is in
// the operating system's page cache at once, as one with write(2) is, and
// the next Spool opened on the directory forwards whatever the last one
// had not. An event forwarded twice that way is stored once, by its
// message ID (the event ID). The log is not synced to the device on every
// write: a machine that loses power may lose the events of the last
// moments not yet forwarded (JetStream stores within milliseconds while
// it is reachable).
//
// A directory belongs to one Spool at a time (a lock file says so). While
// JetStream cannot be reached, events wait in the log; past MaxPending
// bytes of them, Publish refuses (errs.Unavailable).
type Spool struct {
	dir string
	js  jetstream.JetStream
	log *slog.Logger
	// MaxPending bounds the bytes of events written and not yet stored
	// in JetStream.
	maxPending int64
	lock       *os.File

	mu       sync.Mutex
	closed   bool
	file     *os.File      // the segment appended to
	mapped   []byte        // its mapping, as long as the file
	faulted  chan struct{} // closed once its pages are made present
	seq      uint64        // its number
	size     int64         // the length of its events
	segments map[uint64]*segment
	pending  []*record // written, not yet handed to the forwarder
	bytes    int64     // of events not yet stored
	stored   *sync.Cond

	wake    chan struct{}
	hurry   chan struct{} // closed by Close: no more lingering
	stop    chan struct{}
	stopped chan struct{}
	linger  time.Duration
	batches atomic.Int64 // sent to JetStream
	gauge   metric.Registration
}

// segment is one file of the log: how many of its events are not yet
// stored, and whether it is still appended to.
type segment struct {
	path        string
	outstanding int
	sealed      bool
}

// record is one event in the log.
type record struct {
	seq  uint64 // its segment
	msg  *nats.Msg
	size int64
}

// SpoolSegmentSize is the length of a segment: one is sealed and the next
// begun when an event does not fit in the room left. An event longer than
// that has a segment of its own length.
const SpoolSegmentSize = 4 << 20

// segmentSize is SpoolSegmentSize, set smaller by tests.
var segmentSize int64 = SpoolSegmentSize

// maxRecord is the longest record a segment is read with: a longer length
// is taken for a torn one.
const maxRecord = 64 << 20

// DefaultSpoolMaxPending is the default bound on the bytes of events
// waiting in a spool (also held in memory until stored): about 100,000
// usage events, a minute and a half of JetStream away at 1,000 answers a
// second.
const DefaultSpoolMaxPending = 64 << 20

// forwardBatch is how many events the forwarder has in flight at once.
const forwardBatch = 512

// spoolLinger is how long an idle forwarder, woken by an event, waits for
// more before it sends. One event an answer at a time would otherwise
// wake the forwarder, the NATS connection's flusher and reader, and
// JetStream once an event, on the cores that serve the next request; a
// few milliseconds gather the events of several answers into one batch.
// Under load the forwarder is rarely idle and sends without waiting.
var spoolLinger = 5 * time.Millisecond

// OpenSpool opens the spool in dir (creating it), takes it for this
// process, and starts forwarding to js what a previous one left and what
// Publish writes from now on. maxPending <= 0 means
// DefaultSpoolMaxPending.
func OpenSpool(dir string, js jetstream.JetStream, maxPending int64, log *slog.Logger) (*Spool, error) {
	if maxPending <= 0 {
		maxPending = DefaultSpoolMaxPending
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("usage spool: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("usage spool: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("usage spool %s is in use by another process (each router needs a directory of its own): %w", dir, err)
	}
	s := &Spool{dir: dir, js: js, log: log, maxPending: maxPending, lock: lock, segments: map[uint64]*segment{},
		wake: make(chan struct{}, 1), hurry: make(chan struct{}), stop: make(chan struct{}), stopped: make(chan struct{}),
		linger: spoolLinger}
	s.stored = sync.NewCond(&s.mu)
	left, err := s.recover()
	if err != nil {
		lock.Close()
		return nil, err
	}
	if err := s.rotate(0); err != nil {
		lock.Close()
		return nil, err
	}
	if left > 0 {
		log.Info("usage spool: forwarding events a previous run left", "events", left, "dir", dir)
	}
	meter := otel.Meter(tracerName)
	waiting, err := meter.Int64ObservableGauge("modelport.events.spooled", metric.WithUnit("By"),
		metric.WithDescription("Bytes of events a usage spool holds that JetStream has not stored yet; near the spool's bound (64 MiB), answers are withheld."))
	if err == nil {
		s.gauge, _ = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
			o.ObserveInt64(waiting, s.Pending())
			return nil
		}, waiting)
	}
	// The forwarder sends what a previous spool left first.
	go s.forward()
	return s, nil
}

// recover reads the segments a previous spool left, in order, queueing
// their events; a segment's torn end (a write cut short) is dropped. A
// segment the disk fails to read stops the spool from opening, rather
// than be deleted with events in it unread.
func (s *Spool) recover() (int, error) {
	names, err := filepath.Glob(filepath.Join(s.dir, "*.log"))
	if err != nil {
		return 0, err
	}
	slices.Sort(names)
	n := 0
	for _, name := range names {
		seq, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(name), ".log"), 10, 64)
		if err != nil {
			continue
		}
		recs, torn, err := readSegment(name, seq)
		if err != nil {
			return n, fmt.Errorf("usage spool: %w", err)
		}
		if torn {
			s.log.Warn("usage spool: a segment ends in a write cut short; the events before it are forwarded", "file", name)
		}
		s.seq = max(s.seq, seq)
		s.segments[seq] = &segment{path: name, outstanding: len(recs), sealed: true}
		for _, r := range recs {
			s.bytes += r.size
		}
		s.pending = append(s.pending, recs...)
		n += len(recs)
		if len(recs) == 0 {
			_ = os.Remove(name)
			delete(s.segments, seq)
		}
	}
	return n, nil
}

// rotate seals the segment appended to and begins the next, with room for
// at least need bytes. Called with s.mu held, or before the forwarder
// starts.
func (s *Spool) rotate(need int) error {
	s.seal()
	s.seq++
	path := filepath.Join(s.dir, fmt.Sprintf("%020d.log", s.seq))
	f, mapped, err := beginSegment(path, max(segmentSize, int64(need)))
	if err != nil {
		return fmt.Errorf("usage spool: %w", err)
	}
	s.file, s.mapped, s.size = f, mapped, 0
	s.segments[s.seq] = &segment{path: path}
	// Its pages are made present by a goroutine of their own: the event
	// that found no room in the last segment does not wait for them.
	faulted := make(chan struct{})
	go func() {
		defer close(faulted)
		prefault(mapped)
	}()
	s.faulted = faulted
	return nil
}

// seal ends the segment appended to, if any: its mapping goes and its file
// is cut to the length of its events.
func (s *Spool) seal() {
	if s.file == nil {
		return
	}
	<-s.faulted // before the mapping goes
	if err := sealSegment(s.file, s.mapped, s.size); err != nil {
		s.log.Warn("usage spool: sealing a segment", "file", s.file.Name(), "err", err)
	}
	s.file, s.mapped = nil, nil
	seg := s.segments[s.seq]
	seg.sealed = true
	s.dropIfDone(s.seq, seg)
}

// dropIfDone deletes a sealed segment whose events are all stored.
func (s *Spool) dropIfDone(seq uint64, seg *segment) {
	if !seg.sealed || seg.outstanding > 0 {
		return
	}
	if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("usage spool: removing a forwarded segment", "file", seg.path, "err", err)
	}
	delete(s.segments, seq)
}

// Publish writes ev to the spool; JetStream stores it shortly after, with
// its event ID as message ID and ctx's trace context in its headers.
func (s *Spool) Publish(ctx context.Context, ev events.Event) error {
	ctx, span := producerSpan(ctx, "spool", ev)
	defer span.End()
	msg, err := message(ctx, ev)
	if err != nil {
		return err
	}
	frame := encodeRecord(msg)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return errs.E(errs.Unavailable, "publish %s %s: the usage spool is closed", ev.Subject(), ev.EventID())
	case s.bytes+int64(len(frame)) > s.maxPending:
		span.RecordError(errSpoolFull)
		return errs.Wrap(errs.Unavailable, errSpoolFull, "publish %s %s: %d bytes of events wait for JetStream", ev.Subject(), ev.EventID(), s.bytes)
	case s.file == nil || s.size+int64(len(frame)) > int64(len(s.mapped)):
		// No segment (the last one could not begin) or no room left.
		if err := s.rotate(len(frame)); err != nil {
			span.RecordError(err)
			return errs.Wrap(errs.Unavailable, err, "publish %s %s: beginning a usage spool segment", ev.Subject(), ev.EventID())
		}
	}
	if err := put(s.mapped[s.size:], frame); err != nil {
		// The segment may hold part of the frame, past its events:
		// sealing it cuts that off. The next Publish begins another;
		// this event is not published.
		span.RecordError(err)
		s.seal()
		return errs.Wrap(errs.Unavailable, err, "publish %s %s: writing the usage spool", ev.Subject(), ev.EventID())
	}
	s.size += int64(len(frame))
	s.bytes += int64(len(frame))
	s.segments[s.seq].outstanding++
	s.pending = append(s.pending, &record{seq: s.seq, msg: msg, size: int64(len(frame))})
	s.signal()
	return nil
}

var errSpoolFull = errors.New("the usage spool is full: JetStream has not stored its events for a while")

func (s *Spool) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// forward hands what is pending to JetStream, a batch at a time, until
// Close; events JetStream did not store are tried again, after a pause
// that grows while it keeps failing.
func (s *Spool) forward() {
	defer close(s.stopped)
	backoff := time.Duration(0)
	for {
		s.mu.Lock()
		batch := s.pending[:min(len(s.pending), forwardBatch)]
		s.pending = s.pending[len(batch):]
		s.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-s.wake:
				s.gather()
				continue
			case <-s.stop:
				return
			}
		}
		failed := s.send(batch)
		s.mu.Lock()
		for _, r := range batch {
			if slices.Contains(failed, r) {
				continue
			}
			s.bytes -= r.size
			if seg := s.segments[r.seq]; seg != nil {
				seg.outstanding--
				s.dropIfDone(r.seq, seg)
			}
		}
		// Not stored: first in line again.
		s.pending = append(failed, s.pending...)
		s.stored.Broadcast()
		s.mu.Unlock()
		if len(failed) < len(batch) {
			// JetStream is storing: what failed is tried again with
			// the next batch, without a pause for the rest.
			backoff = 0
			continue
		}
		backoff = min(max(2*backoff, 50*time.Millisecond), 2*time.Second)
		select {
		case <-time.After(backoff):
		case <-s.stop:
			return
		}
	}
}

// gather lets the events of the next few answers join the one that woke
// an idle forwarder, until the linger ends or Close hurries it.
func (s *Spool) gather() {
	if s.linger <= 0 {
		return
	}
	t := time.NewTimer(s.linger)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.hurry:
	case <-s.stop:
	}
}

// send publishes a batch without waiting between messages and returns
// those JetStream did not store.
func (s *Spool) send(batch []*record) (failed []*record) {
	type inFlight struct {
		r   *record
		ack jetstream.PubAckFuture
	}
	s.batches.Add(1)
	sent := time.Now()
	flights := make([]inFlight, 0, len(batch))
	var lastErr error
	for _, r := range batch {
		ack, err := s.js.PublishMsgAsync(r.msg)
		if err != nil {
			failed, lastErr = append(failed, r), err
			continue
		}
		flights = append(flights, inFlight{r, ack})
	}
	timeout := time.NewTimer(publishAttemptTimeout)
	defer timeout.Stop()
	deadline := timeout.C
	rec := recorderOf(s.js.Conn())
	stored := map[string]int64{} // by subject: counted once a batch
	for _, f := range flights {
		err := ackOf(f.ack, &deadline)
		if err == nil {
			stored[f.r.msg.Subject]++
			continue
		}
		lastErr = err
		failed = append(failed, f.r)
	}
	for subject, n := range stored {
		instruments().published.Add(context.Background(), n, outcomeStored, subjectAttr(subject))
	}
	if len(failed) > 0 {
		outcome := outcomeFailed
		if rec.deniedSince(failed[0].msg.Subject, sent) {
			outcome = outcomeDenied
		}
		instruments().published.Add(context.Background(), int64(len(failed)), outcome, subjectAttr(failed[0].msg.Subject))
		s.log.Warn("usage spool: events not stored in JetStream yet; trying again", "events", len(failed), "err", lastErr)
	}
	return failed
}

// errNoAck is a publish JetStream did not answer in time.
var errNoAck = errors.New("no ack from JetStream in time")

// expired is a deadline that has passed.
var expired = func() <-chan time.Time {
	c := make(chan time.Time)
	close(c)
	return c
}()

// ackOf returns a publish's outcome: nil once stored. It waits until
// *deadline, which becomes expired once it has passed: an answer already
// in is still taken then.
func ackOf(f jetstream.PubAckFuture, deadline *<-chan time.Time) error {
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	default:
	}
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-*deadline:
		*deadline = expired
		return errNoAck
	}
}

// Pending returns how many bytes of events wait to be stored in
// JetStream.
func (s *Spool) Pending() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes
}

// Close refuses further events, waits until JetStream has stored every
// event written (or ctx ends: what is left stays in the log for the next
// spool on the directory), and lets go of the directory.
func (s *Spool) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.hurry)
	stopWaiting := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stored.Broadcast()
	})
	for s.bytes > 0 && ctx.Err() == nil {
		s.stored.Wait()
	}
	stopWaiting()
	left := s.bytes
	s.seal()
	s.mu.Unlock()
	s.release()
	if left > 0 {
		return fmt.Errorf("usage spool: %d bytes of events not yet stored in JetStream stay in %s for the next start: %w", left, s.dir, ctx.Err())
	}
	return nil
}

// release stops the forwarder and lets go of the directory.
func (s *Spool) release() {
	close(s.stop)
	<-s.stopped
	if s.gauge != nil {
		_ = s.gauge.Unregister()
	}
	_ = s.lock.Close() // and with it the lock
}

// A record on disk: its length and CRC-32C (of what follows them), then
// the subject, the headers and the data, each after its length.
var crcTable = crc32.MakeTable(crc32.Castagnoli)

func encodeRecord(msg *nats.Msg) []byte {
	var hdr strings.Builder
	for k, vs := range msg.Header {
		for _, v := range vs {
			hdr.WriteString(k)
			hdr.WriteString(": ")
			hdr.WriteString(v)
			hdr.WriteString("\r\n")
		}
	}
	body := make([]byte, 0, 8+4+len(msg.Subject)+4+hdr.Len()+4+len(msg.Data))
	body = append(body, make([]byte, 8)...)
	body = binary.LittleEndian.AppendUint32(body, uint32(len(msg.Subject)))
	body = append(body, msg.Subject...)
	body = binary.LittleEndian.AppendUint32(body, uint32(hdr.Len()))
	body = append(body, hdr.String()...)
	body = binary.LittleEndian.AppendUint32(body, uint32(len(msg.Data)))
	body = append(body, msg.Data...)
	binary.LittleEndian.PutUint32(body[0:4], uint32(len(body)-8))
	binary.LittleEndian.PutUint32(body[4:8], crc32.Checksum(body[8:], crcTable))
	return body
}

// readSegment reads a segment's records.
func readSegment(path string, seq uint64) (recs []*record, torn bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	recs, torn, err = scanSegment(bufio.NewReader(f), seq)
	if err != nil {
		return nil, false, fmt.Errorf("reading %s: %w", path, err)
	}
	return recs, torn, nil
}

// scanSegment reads the records of a segment from r. A segment its spool
// did not seal (the process ended first) goes on after its last record
// with the zeros of its reserved length: a record length of zero, with
// nothing but zeros after it, ends the records as the end of the file
// does. No record has length zero (its subject's, headers' and data's
// lengths are in it). torn reports any other end: the last write cut
// short, whatever follows it.
func scanSegment(r io.Reader, seq uint64) (recs []*record, torn bool, err error) {
	var head [8]byte
	for {
		n, err := io.ReadFull(r, head[:])
		switch {
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return recs, !zeros(head[:n]), nil
		case err != nil:
			return nil, false, err
		}
		size := binary.LittleEndian.Uint32(head[0:4])
		if size == 0 {
			end, err := zerosToEnd(r)
			return recs, !zeros(head[:]) || !end, err
		}
		if size > maxRecord {
			return recs, true, nil
		}
		body := make([]byte, size)
		if _, err := io.ReadFull(r, body); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return recs, true, nil
			}
			return nil, false, err
		}
		if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(head[4:8]) {
			return recs, true, nil
		}
		msg, ok := decodeRecord(body)
		if !ok {
			return recs, true, nil
		}
		recs = append(recs, &record{seq: seq, msg: msg, size: int64(8 + size)})
	}
}

// zeros reports whether b holds only zeros.
func zeros(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// zerosToEnd reports whether what is left of r is zeros.
func zerosToEnd(r io.Reader) (bool, error) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if !zeros(buf[:n]) {
			return false, nil
		}
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
}

func decodeRecord(b []byte) (*nats.Msg, bool) {
	field := func() ([]byte, bool) {
		if len(b) < 4 {
			return nil, false
		}
		n := binary.LittleEndian.Uint32(b)
		if uint64(len(b)-4) < uint64(n) {
			return nil, false
		}
		f := b[4 : 4+n]
		b = b[4+n:]
		return f, true
	}
	subject, ok1 := field()
	hdr, ok2 := field()
	data, ok3 := field()
	if !ok1 || !ok2 || !ok3 || len(subject) == 0 {
		return nil, false
	}
	msg := nats.NewMsg(string(subject))
	for line := range strings.SplitSeq(strings.TrimSuffix(string(hdr), "\r\n"), "\r\n") {
		if k, v, ok := strings.Cut(line, ": "); ok {
			msg.Header.Add(k, v)
		}
	}
	msg.Data = data
	return msg, true
}
