package natsx

import (
	"bufio"
	"context"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/nats-io/nats.go/jetstream"
)

// KillSpool ends s as the end of its process would: nothing more is
// forwarded, nothing is cleaned up, and the directory is let go of.
func KillSpool(s *Spool) {
	s.mu.Lock()
	s.closed = true
	if s.file != nil {
		<-s.faulted
		_ = syscall.Munmap(s.mapped)
		_ = s.file.Close()
		s.file, s.mapped = nil, nil
	}
	s.mu.Unlock()
	s.release()
}

// SetSpoolLinger sets how long the forwarders of spools opened from now
// on wait for more events; it returns the setting to restore.
func SetSpoolLinger(d time.Duration) (restore func()) {
	old := spoolLinger
	spoolLinger = d
	return func() { spoolLinger = old }
}

// SpoolBatches returns how many batches s has sent to JetStream.
func SpoolBatches(s *Spool) int64 { return s.batches.Load() }

// SetSpoolSegmentSize sets the length of the segments spools begin from
// now on; it returns the setting to restore.
func SetSpoolSegmentSize(n int64) (restore func()) {
	old := segmentSize
	segmentSize = n
	return func() { segmentSize = old }
}

// EncodeRecord returns ev as a spool writes it to a segment.
func EncodeRecord(ev events.Event) ([]byte, error) {
	msg, err := message(context.Background(), ev)
	if err != nil {
		return nil, err
	}
	return encodeRecord(msg), nil
}

// ScanSegment reads a segment from r as a spool opened on its directory
// does: the message IDs of its events, the bytes of their records, and
// whether it ends in a write cut short.
func ScanSegment(r io.Reader) (ids []string, size int64, torn bool, err error) {
	recs, torn, err := scanSegment(r, 1)
	for _, rec := range recs {
		ids = append(ids, rec.msg.Header.Get(jetstream.MsgIDHeader))
		size += rec.size
	}
	return ids, size, torn, err
}

// ReadSegment is ScanSegment on the file at path.
func ReadSegment(path string) (ids []string, size int64, torn bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, false, err
	}
	defer f.Close()
	return ScanSegment(bufio.NewReader(f))
}
