package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/jsonscan"
	"github.com/modelport/modelport/libs/state"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Stream is a streaming chat completion on its way from the engine to the
// client. Next yields the chunks to send; Close records the usage. It is
// used by one goroutine, but for ClientGone.
type Stream struct {
	g    *Gateway
	ctx  context.Context
	call Call // the caller and request ID; the body is gone
	svc  state.Service
	up   *upstream
	// endpoint is the API path metered: chat or legacy completions.
	endpoint string
	id       string
	started  time.Time
	opts     streamOptions // what the client asked for
	prompt   promptCounter // for the prompt's tokens, when the engine gives none
	lines    *lineReader
	// events, when set, turns the engine's chunks into another API's
	// events (the Responses API's); pending are those not yet sent.
	events  eventShaper
	pending [][]byte

	usage    Usage
	sawUsage bool
	chunks   int // chunks with content, for an engine that reports no usage
	finished bool
	// idJSON and modelJSON are the id and the access name as JSON
	// strings, for every chunk.
	idJSON, modelJSON []byte
	billed            Usage       // what Close recorded
	toldUsage         bool        // the engine's usage chunk (choices: []) went to the client
	idled             bool        // ended for sending nothing for the idle timeout
	gone              atomic.Bool // the client went away
	once              sync.Once
}

// ClientGone tells the stream that its client went away, as when sending
// to it failed: the engine request is cancelled, Next fails, and Close
// meters the stream as 499. Safe to call from any goroutine.
func (s *Stream) ClientGone() {
	s.gone.Store(true)
	if s.up.cancel != nil {
		s.up.cancel(errClientGone)
	}
}

// OnWait sets f to run whenever Next is about to wait for more of the
// engine's answer, having used up what the engine had sent: the moment
// to flush the events written so far to the client, so that the events
// an engine sent at once go out in one write rather than one each, while
// none waits on the engine's next.
func (s *Stream) OnWait(f func()) { s.lines.src.wait = f }

// clientGone reports whether the client went away.
func (s *Stream) clientGone() bool { return s.gone.Load() || s.ctx.Err() != nil }

// Next returns the data of the next event to send, io.EOF once the engine
// has finished, or the error that ended the stream (send ErrorEvent(err)).
func (s *Stream) Next() ([]byte, error) {
	for {
		if len(s.pending) > 0 {
			out := s.pending[0]
			s.pending = s.pending[1:]
			return out, nil
		}
		if s.finished {
			return nil, io.EOF
		}
		data, err := s.lines.event()
		if err != nil {
			switch {
			case s.clientGone():
				return nil, context.Canceled
			case s.up.idled():
				s.up.fail()
				s.idled = true
				return nil, errs.E(errs.Timeout, "the engine sent nothing for %s", s.g.IdleTimeout)
			case errors.Is(err, io.EOF):
				s.up.fail()
				return nil, errs.E(errs.Upstream, "the engine ended the stream early")
			default:
				s.up.fail()
				return nil, errs.Wrap(errs.Upstream, err, "the engine's stream broke")
			}
		}
		if bytes.Equal(data, []byte("[DONE]")) {
			s.finished = true
			if s.events != nil {
				// The last event carries the usage: it is recorded before
				// the client has it, or the client gets the error instead.
				if err := s.Close(); err != nil {
					return nil, err
				}
				s.pending = s.events.done(s.usageOrCounted())
			}
			continue
		}
		if len(bytes.TrimSpace(data)) == 0 {
			continue // an empty event carries no chunk
		}
		out, skip, err := s.rewrite(data)
		if err != nil {
			return nil, err
		}
		if !skip {
			return out, nil
		}
	}
}

// rewrite turns an engine chunk into the client's: Modelport's id and the
// access name, and usage only where the client asked for it. It splices
// the chunk rather than decoding and encoding it again: the engine's
// members keep their order and bytes, but for the id and the model, and
// the usage where it is dropped.
func (s *Stream) rewrite(data []byte) (out []byte, skip bool, err error) {
	data = bytes.Trim(data, jsonSpace) // JSON's own whitespace: "{}\v" is not a chunk
	if !jsonscan.Valid(data) || jsonscan.Kind(data) != "object" {
		// null is not a chunk either.
		s.up.fail()
		return nil, false, errs.E(errs.Upstream, "the engine sent a malformed chunk")
	}
	if bytes.IndexByte(data, '\n') >= 0 || bytes.IndexByte(data, '\r') >= 0 {
		// A chunk sent on several data lines, or with line breaks as
		// whitespace: spliced as it is, it would end the client's event
		// early. In valid JSON a raw line break is only ever whitespace.
		var b bytes.Buffer
		_ = json.Compact(&b, data)
		data = b.Bytes()
	}
	var members [8]member
	ms, err := objectMembers(members[:0], data, jsonscan.All(data))
	if err != nil {
		s.up.fail()
		return nil, false, errs.Wrap(errs.Upstream, err, "the engine sent a malformed chunk")
	}
	// The last member of a name wins, as encoding/json reads a chunk.
	ms = lastOfEach(ms)
	var usage, choices, errv jsonscan.Span
	var hasUsage, hasChoices, hasError bool
	for _, m := range ms {
		switch m.key {
		case "usage":
			usage, hasUsage = m.at, true
		case "choices":
			choices, hasChoices = m.at, true
		case "error":
			errv, hasError = m.at, true
		}
	}
	if hasError {
		return nil, false, engineError(502, append(append([]byte(`{"error":`), data[errv.Start:errv.End]...), '}'))
	}
	if hasUsage {
		if u, ok := readUsage(data, usage); ok {
			s.usage, s.sawUsage = u, true
		}
	}
	final := hasChoices && string(bytes.TrimSpace(data[choices.Start:choices.End])) == "[]"
	dropUsage := false
	switch {
	case final && !s.opts.IncludeUsage:
		return nil, true, nil
	case final:
		s.toldUsage = true
	case !final && !s.opts.ContinuousUsageStats:
		dropUsage = true
	}
	if !final && hasChoices && hasContent(data[choices.Start:choices.End]) {
		s.chunks++
		if s.chunks == 1 {
			TimingOf(s.ctx).Mark(StageFirst)
			ttft := time.Since(s.started)
			trace.SpanFromContext(s.ctx).AddEvent("first token", trace.WithAttributes(attribute.Float64("ttft_seconds", ttft.Seconds())))
			if s.g.Observer != nil {
				s.g.Observer.FirstToken(s.svc, ttft)
			}
		}
	}
	if s.events != nil {
		var ch []byte
		if hasChoices {
			ch = data[choices.Start:choices.End]
		}
		evs, err := s.events.chunk(ch)
		if err != nil {
			s.up.fail()
			return nil, false, err
		}
		s.pending = append(s.pending, evs...)
		return nil, true, nil
	}
	if s.idJSON == nil {
		s.idJSON, _ = marshal(s.id)
		s.modelJSON, _ = marshal(s.svc.AccessName)
	}
	out = make([]byte, 0, len(data)+len(s.idJSON)+len(s.modelJSON)+16)
	out = append(out, '{')
	put := func(key string, v []byte) {
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(appendKey(out, key), v...)
	}
	put("id", s.idJSON)
	put("model", s.modelJSON)
	for _, m := range ms {
		switch {
		case m.key == "id" || m.key == "model":
			continue
		case m.key == "usage" && dropUsage:
			continue
		}
		put(m.key, data[m.at.Start:m.at.End])
	}
	return append(out, '}'), false, nil
}

// jsonSpace is the whitespace JSON allows around a value.
const jsonSpace = " \t\r\n"

// appendKey appends key as a JSON string and a colon.
func appendKey(out []byte, key string) []byte {
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			k, _ := marshal(key)
			return append(append(out, k...), ':')
		}
	}
	out = append(append(append(out, '"'), key...), '"')
	return append(out, ':')
}

// hasContent reports whether a chunk's choices carry generated content:
// text (a chat delta's or a legacy completion's), reasoning or tool calls,
// as opposed to the role-only chunk engines send first or the empty delta
// of a finish chunk. It reads the choices as encoding/json would decode
// them into the fields it looks at (names matched ignoring case, a later
// member of a name replacing an earlier one, a repeated delta merged into
// the first), without decoding them: choices that encoding/json would not
// decode into those fields (a wrong type anywhere in them) have none.
// choices is valid JSON.
func hasContent(choices []byte) bool {
	if len(choices) == 0 {
		return false
	}
	switch choices[0] {
	case 'n':
		return false
	case '[':
	default:
		return false
	}
	found, ok := false, true
	err := jsonscan.Elements(choices, jsonscan.All(choices), func(_ int, el jsonscan.Span) error {
		c, good := readChoice(choices, el)
		ok = ok && good
		found = found || c
		return nil
	})
	return err == nil && ok && found
}

// readChoice reads a choice as hasContent does: whether it has content,
// and false for good where encoding/json would fail to decode it.
func readChoice(b []byte, v jsonscan.Span) (content, good bool) {
	switch b[v.Start] {
	case 'n':
		return false, true
	case '{':
	default:
		return false, false
	}
	// What a decode would leave in each field: a string's raw value, or
	// "" for none (nil).
	var text, deltaContent, reasoning, toolCalls []byte
	good = true
	str := func(at jsonscan.Span, dst *[]byte) {
		switch b[at.Start] {
		case '"':
			*dst = b[at.Start:at.End]
		case 'n':
			*dst = nil
		default:
			good = false
		}
	}
	_ = jsonscan.Members(b, v, func(key string, at jsonscan.Span) error {
		switch {
		case strings.EqualFold(key, "text"):
			str(at, &text)
		case strings.EqualFold(key, "delta"):
			switch b[at.Start] {
			case 'n': // a struct is left as it is
			case '{':
				return jsonscan.Members(b, at, func(key string, at jsonscan.Span) error {
					switch {
					case strings.EqualFold(key, "content"):
						str(at, &deltaContent)
					case strings.EqualFold(key, "reasoning_content"):
						str(at, &reasoning)
					case strings.EqualFold(key, "tool_calls"):
						toolCalls = b[at.Start:at.End]
					}
					return nil
				})
			default:
				good = false
			}
		}
		return nil
	})
	// A JSON string is empty only as "".
	nonEmpty := func(q []byte) bool { return len(q) > 2 }
	content = nonEmpty(text) || nonEmpty(deltaContent) || nonEmpty(reasoning) ||
		len(toolCalls) > 0 && string(toolCalls) != "null" && string(toolCalls) != "[]"
	return content, good
}

// Close ends the stream and records its usage exactly once, however it
// ended: as the engine reported it, or, where it reported none, the
// prompt's tokens counted by the router and a token per content chunk
// sent. The status is 200 for a finished stream, 499 when the client went
// away, 504 when the engine went silent, 502 when it failed.
func (s *Stream) Close() error {
	var err error
	s.once.Do(func() {
		s.up.close()
		s.lines.release()
		status := 200
		switch {
		case !s.finished && s.clientGone():
			status = 499
		case !s.finished && s.idled:
			status = 504
		case !s.finished:
			status = 502
		}
		if !s.sawUsage {
			s.g.log.WarnContext(s.ctx, "no usage from the engine for this stream; billing the prompt's counted tokens and a token per content chunk",
				"service_id", s.svc.ID, "status", status, "content_chunks", s.chunks)
		}
		u := s.usageOrCounted()
		u.TotalTokens = u.PromptTokens + u.CompletionTokens
		u = u.billable()
		s.billed = u
		err = s.g.meter(s.ctx, s.call, s.svc, s.up.instance, s.endpoint, status, u, s.started)
	})
	return err
}

// usageOrCounted is the stream's usage as the engine reported it, or,
// where it reported none, the prompt's counted tokens and a token per
// content chunk sent.
func (s *Stream) usageOrCounted() Usage {
	if s.sawUsage {
		return s.usage
	}
	u := Usage{CompletionTokens: s.chunks}
	if s.prompt != nil {
		u.PromptTokens = s.prompt.tokens()
	}
	return u
}

// EndsWithDone reports whether the stream's last event is "[DONE]", as
// chat and legacy completions have it; a Responses stream ends with its
// response.completed event instead.
func (s *Stream) EndsWithDone() bool { return s.events == nil }

// eventShaper turns a stream of chat chunks into another API's stream
// events, each the data of one server-sent event.
type eventShaper interface {
	// chunk returns the events for one engine chunk, given its choices
	// (nil where it has none).
	chunk(choices []byte) ([][]byte, error)
	// done returns the events that end a finished stream of usage u.
	done(u Usage) [][]byte
}

// UsageChunk is the last chunk of a stream that ended early, for a
// client that asked for usage (stream_options.include_usage): what Close
// billed, so that the client knows it before the error event. It is nil
// where the client did not ask, where the engine's own usage chunk already
// reached it, or for a Responses stream, whose clients read usage only
// from its last event, and must be called after Close.
func (s *Stream) UsageChunk() []byte {
	if !s.opts.IncludeUsage || s.events != nil || s.toldUsage {
		return nil
	}
	object := "chat.completion.chunk"
	if s.endpoint == completionsEndpoint {
		object = "text_completion"
	}
	b, _ := marshal(map[string]any{
		"id": s.id, "object": object, "created": s.started.Unix(),
		"model": s.svc.AccessName, "choices": []any{}, "usage": s.billed,
	})
	return b
}

// maxEvent bounds one server-sent event from an engine, so an engine
// that never ends a line cannot make the router buffer without end.
const maxEvent = 16 << 20

// lineReader reads server-sent events.
type lineReader struct {
	r   *bufio.Reader
	src source
	max int
}

// source is the engine's answer under a lineReader's buffer: each read
// from it, which may wait for the engine, runs wait first.
type source struct {
	r    io.Reader
	wait func()
}

func (s *source) Read(p []byte) (int, error) {
	if s.wait != nil {
		s.wait()
	}
	return s.r.Read(p)
}

// readBuffer is a stream's read buffer: an engine's chunks are a few
// hundred bytes, and what the connection has read is already in the HTTP
// client's buffer of the same size, so a larger one would only hold
// memory for as long as a stream is open (thousands may be); a longer
// line is gathered from several reads (see line).
const readBuffer = 4 << 10

// readers keeps the buffers of streams that ended for the next ones,
// rather than allocating one per stream.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBuffer) }}

func newLineReader(r io.Reader) *lineReader {
	l := &lineReader{r: readers.Get().(*bufio.Reader), src: source{r: r}, max: maxEvent}
	l.r.Reset(&l.src)
	return l
}

// release gives the reader's buffer back; the reader is not used again.
func (l *lineReader) release() {
	if l.r == nil {
		return
	}
	l.r.Reset(nil)
	readers.Put(l.r)
	l.r = nil
}

// errEventTooLarge is an engine event over maxEvent.
var errEventTooLarge = errors.New("an event is too large")

// event returns the data of the next event with data, as the
// server-sent events standard reads it: lines end with LF or CR LF, a
// blank line ends an event, lines starting with a colon are comments,
// a field name without a colon has an empty value, one space after the
// colon is dropped, fields other than data are skipped, and multi-line
// data is joined with LF. An event of "data:" alone has empty, non-nil
// data. Where the standard drops an event cut off by the end of the body,
// event returns it, since engines may close without a last blank line.
func (l *lineReader) event() ([]byte, error) {
	var data []byte
	for {
		line, err := l.line()
		if errors.Is(err, errEventTooLarge) {
			return nil, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			// A blank line ends an event; so does the end of the body.
			if data != nil {
				return data, nil
			}
			if err != nil {
				return nil, err
			}
			continue
		}
		field, value, found := bytes.Cut(line, []byte(":"))
		if found {
			value = bytes.TrimPrefix(value, []byte(" "))
		}
		if string(field) == "data" {
			if data == nil {
				data = make([]byte, 0, len(value))
			} else {
				data = append(data, '\n')
			}
			if len(data)+len(value) > l.max {
				return nil, errEventTooLarge
			}
			data = append(data, value...)
		}
		if err != nil { // the body ended without a newline
			if data != nil {
				return data, nil
			}
			return nil, err
		}
	}
}

// line returns the next line with its LF, or what is left at the end of
// the body with the reader's error. A line over l.max is errEventTooLarge.
// A line that fits the read buffer is returned in it, valid until the
// next read; a longer one is gathered in a slice of its own.
func (l *lineReader) line() ([]byte, error) {
	frag, err := l.r.ReadSlice('\n')
	if len(frag) > l.max+2 { // +2: the CR LF
		return nil, errEventTooLarge
	}
	if !errors.Is(err, bufio.ErrBufferFull) {
		return frag, err
	}
	line := slices.Clone(frag)
	for {
		frag, err := l.r.ReadSlice('\n')
		if len(line)+len(frag) > l.max+2 { // +2: the CR LF
			return nil, errEventTooLarge
		}
		line = append(line, frag...)
		if !errors.Is(err, bufio.ErrBufferFull) {
			return line, err
		}
	}
}
