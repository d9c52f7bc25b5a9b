package events

// SubjectEventRejectedV1 is where consumers put the messages they can never
// process; the rejecting consumer's durable name follows as the last token.
const SubjectEventRejectedV1 = "deadletter.event.rejected.v1" // + "." + consumer

// EventRejectedV1 is a dead letter: a message a consumer rejected because it
// is invalid against its event's contract, so no retry could ever succeed.
// It carries the original message whole (subject, headers, payload) and the
// reason, so it can be inspected, fixed and published again. Published by
// the consumer that rejected the message (billing, for usage and lifecycle
// events) on DeadLetterSubject(Consumer); read by operators and by billing's
// dead-letter report.
type EventRejectedV1 struct {
	Meta
	// Consumer is the durable name of the consumer that rejected it.
	Consumer string `json:"consumer"`
	// Stream and StreamSequence locate the original message.
	Stream         string `json:"stream"`
	StreamSequence uint64 `json:"stream_sequence"`
	// OriginalSubject is the subject the original was published on.
	OriginalSubject string `json:"original_subject"`
	// OriginalMsgID is the original's Nats-Msg-Id header (its event ID
	// when its publisher followed the contract); empty when it had none.
	OriginalMsgID string `json:"original_msg_id"`
	// Headers are all of the original's headers.
	Headers map[string][]string `json:"headers"`
	// Reason says why the consumer rejected it.
	Reason string `json:"reason"`
	// Payload is the original body: the text itself when PayloadEncoding
	// is "utf-8", its standard base64 encoding when it is "base64".
	Payload         string `json:"payload"`
	PayloadEncoding string `json:"payload_encoding"`
}

// Subject implements Event.
func (e EventRejectedV1) Subject() string { return DeadLetterSubject(e.Consumer) }

// DeadLetterSubject is the subject of the dead letters of one consumer.
func DeadLetterSubject(consumer string) string { return SubjectEventRejectedV1 + "." + consumer }

func init() { Registry[SubjectEventRejectedV1] = EventRejectedV1{} }
