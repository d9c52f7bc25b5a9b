package transport

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/nats-io/nats.go/jetstream"
)

// DeadLetters puts rejected messages on the DEADLETTER stream and reports
// them. It is safe for concurrent use.
type DeadLetters struct {
	js  jetstream.JetStream
	pub *natsx.Publisher
}

// NewDeadLetters returns DeadLetters on js.
func NewDeadLetters(js jetstream.JetStream) *DeadLetters {
	return &DeadLetters{js: js, pub: natsx.NewPublisher(js)}
}

// Reject stores msg as a dead letter of consumer with reason, then
// terminates it so it is never delivered again. If the dead letter cannot
// be stored, msg is left to be redelivered instead, so nothing is lost.
// Rejecting the same message again stores no second dead letter: the dead
// letter's ID comes from the message's stream and sequence.
func (d *DeadLetters) Reject(ctx context.Context, consumer string, msg jetstream.Msg, reason error) error {
	md, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("dead letter: metadata: %w", err)
	}
	data, why := msg.Data(), reason.Error()
	if len(data) > maxPayload {
		// Room for the headers and the rest of the letter under NATS's
		// default 1 MiB message limit.
		data, why = data[:maxPayload], why+fmt.Sprintf(" (payload of %d bytes cut to its first %d)", len(data), maxPayload)
	}
	headers := map[string][]string{}
	for k, v := range msg.Headers() {
		headers[k] = append([]string{}, v...)
	}
	ev := events.EventRejectedV1{
		Meta:            events.Meta{ID: deadLetterID(md.Stream, consumer, md.Sequence.Stream, md.Timestamp), OccurredAt: time.Now().UTC()},
		Consumer:        consumer,
		Stream:          md.Stream,
		StreamSequence:  md.Sequence.Stream,
		OriginalSubject: msg.Subject(),
		OriginalMsgID:   msg.Headers().Get(jetstream.MsgIDHeader),
		Headers:         headers,
		Reason:          why,
		Payload:         string(data),
		PayloadEncoding: "utf-8",
	}
	if !utf8.Valid(data) {
		ev.Payload, ev.PayloadEncoding = base64.StdEncoding.EncodeToString(data), "base64"
	}
	if err := d.pub.Publish(ctx, ev); err != nil {
		return err
	}
	return msg.TermWithReason(truncate(reason.Error(), 200))
}

// deadLetterID is a UUIDv7 made from where the original sits: its time is
// when the original was stored, the rest a hash of stream, consumer and
// sequence. The same message rejected twice gets the same ID, which
// JetStream's duplicate window then drops.
func deadLetterID(stream, consumer string, seq uint64, stored time.Time) string {
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%d", stream, consumer, seq))
	var u [16]byte
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(stored.UnixMilli()))
	copy(u[:6], ms[2:])
	copy(u[6:], h[:10])
	u[6] = u[6]&0x0f | 0x70 // version 7
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// maxPayload bounds the original body a dead letter keeps.
const maxPayload = 512 << 10

// maxScan bounds how many dead letters a report reads.
const maxScan = 5000

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

// DeadLetterReport is what the dead-letter report shows: how many
// messages billing's consumers rejected, and the latest ones.
type DeadLetterReport struct {
	Count  uint64                   `json:"count"`
	Latest []events.EventRejectedV1 `json:"data"`
}

// Report counts the dead letters of the given consumers and returns the
// latest of them, newest first, at most limit.
func (d *DeadLetters) Report(ctx context.Context, consumers []string, limit int) (DeadLetterReport, error) {
	r := DeadLetterReport{Latest: []events.EventRejectedV1{}}
	st, err := d.js.Stream(ctx, events.StreamDeadLetter)
	if err != nil {
		return r, errs.Wrap(errs.Unavailable, err, "dead-letter stream")
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(events.SubjectEventRejectedV1+".>"))
	if err != nil {
		return r, errs.Wrap(errs.Unavailable, err, "dead-letter stream")
	}
	wanted := map[string]bool{}
	for _, c := range consumers {
		wanted[events.DeadLetterSubject(c)] = true
	}
	for subj, n := range info.State.Subjects {
		if wanted[subj] {
			r.Count += n
		}
	}
	// Other consumers' letters may sit in between; look at a bounded tail.
	for seq, looked := info.State.LastSeq, 0; seq >= info.State.FirstSeq && seq > 0 && len(r.Latest) < limit && looked < maxScan; seq, looked = seq-1, looked+1 {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return r, errs.Wrap(errs.Unavailable, err, "dead letter %d", seq)
		}
		if !wanted[m.Subject] {
			continue
		}
		var ev events.EventRejectedV1
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			continue
		}
		r.Latest = append(r.Latest, ev)
	}
	return r, nil
}
