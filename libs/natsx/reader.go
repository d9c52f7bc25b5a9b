package natsx

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrCaughtUp is StreamReader.Next's answer when no message is stored
// after the last one read.
var ErrCaughtUp = errors.New("no newer message in the stream")

// StreamReader reads a stream message by message with message gets, and
// no consumer: all an identity that may only read the stream
// (access.Identity.Reads) can do, and all it needs to follow a stream. It
// is not safe for concurrent use.
type StreamReader struct {
	st   jetstream.Stream
	next uint64
}

// NewStreamReader returns a reader of st that starts at the first message
// stored at or after since, or, when since is zero, after the last message
// stored now.
func NewStreamReader(ctx context.Context, st jetstream.Stream, since time.Time) (*StreamReader, error) {
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	r := &StreamReader{st: st, next: info.State.LastSeq + 1}
	if since.IsZero() {
		return r, nil
	}
	// Times grow with sequence numbers: search for the first one at or
	// after since, in as many gets as the log of the stream's length.
	lo, hi := info.State.FirstSeq, info.State.LastSeq+1
	for lo < hi {
		mid := lo + (hi-lo)/2
		m, err := r.at(ctx, mid)
		if errors.Is(err, ErrCaughtUp) {
			hi = mid
			continue
		}
		if err != nil {
			return nil, err
		}
		if m.Time.Before(since) {
			lo = m.Sequence + 1
		} else {
			hi = mid
		}
	}
	r.next = lo
	return r, nil
}

// at returns the first message stored at or after seq.
func (r *StreamReader) at(ctx context.Context, seq uint64) (*jetstream.RawStreamMsg, error) {
	m, err := r.st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(">"))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, ErrCaughtUp
	}
	return m, err
}

// Next returns the next message, or ErrCaughtUp when there is none yet.
func (r *StreamReader) Next(ctx context.Context) (*jetstream.RawStreamMsg, error) {
	m, err := r.at(ctx, r.next)
	if err != nil {
		return nil, err
	}
	r.next = m.Sequence + 1
	return m, nil
}
