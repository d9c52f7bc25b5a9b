package gateway

import (
	"encoding/json"
	"slices"
	"strings"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/jsonscan"
)

// member is a member of a JSON object: its name as encoding/json reads
// it, and its value's span; set, when not nil, is the value written in
// its place.
type member struct {
	key string
	at  jsonscan.Span
	set []byte
}

// objectMembers appends the members of the object at v in b to ms.
func objectMembers(ms []member, b []byte, v jsonscan.Span) ([]member, error) {
	err := jsonscan.Members(b, v, func(key string, at jsonscan.Span) error {
		ms = append(ms, member{key: key, at: at})
		return nil
	})
	return ms, err
}

// lastOfEach returns ms without the members a later one of the same name
// replaces, in their order: the object as encoding/json reads it.
func lastOfEach(ms []member) []member {
	if len(ms) <= 16 {
		out := ms[:0]
		for i, m := range ms {
			later := false
			for _, n := range ms[i+1:] {
				if n.key == m.key {
					later = true
					break
				}
			}
			if !later {
				out = append(out, m)
			}
		}
		return out
	}
	last := make(map[string]int, len(ms))
	for i, m := range ms {
		last[m.key] = i
	}
	out := ms[:0]
	for i, m := range ms {
		if last[m.key] == i {
			out = append(out, m)
		}
	}
	return out
}

// appendAsMap appends the object of members ms (of b) as encoding/json
// writes the map[string]json.RawMessage it decodes from it: the last
// member of each name, in the order of names, each value compact. A
// member's set value stands for its span.
func appendAsMap(out, b []byte, ms []member) []byte {
	slices.SortStableFunc(ms, func(x, y member) int { return strings.Compare(x.key, y.key) })
	out = append(out, '{')
	n := 0
	for i, m := range ms {
		if i+1 < len(ms) && ms[i+1].key == m.key {
			continue // a later member of the name stands
		}
		if n > 0 {
			out = append(out, ',')
		}
		n++
		out = appendKey(out, m.key)
		if m.set != nil {
			out = append(out, m.set...)
		} else {
			out = jsonscan.AppendCompact(out, b[m.at.Start:m.at.End])
		}
	}
	return append(out, '}')
}

// appendString appends s as a JSON string, as marshal writes it.
func appendString(out []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			q, _ := marshal(s)
			return append(out, q...)
		}
	}
	return append(append(append(out, '"'), s...), '"')
}

// chatCompletionObject is the object of every chat completion the client
// gets.
var chatCompletionObject = []byte(`"chat.completion"`)

// rewriteCompletion turns an engine's chat completion into the client's:
// Modelport's id, the access name as model, and message.tool_calls always
// present (an empty list where there are none). Every other field stays as
// the engine wrote it, and the answer is spliced rather than decoded
// whole and encoded again: the top-level members keep the engine's order and bytes, but for the
// id, object and model put in their place (first, where the engine wrote
// none) and the earlier of duplicate names, which encoding/json would
// drop; the choices are written as encoding/json writes them, which is
// what clients have always had: each choice's fields in name order, and
// message.tool_calls [] where the engine wrote none or null. The checks
// and errors are those of decoding the answer into maps.
func rewriteCompletion(b []byte, id, model string) ([]byte, Usage, error) {
	if !jsonscan.Valid(b) || jsonscan.Kind(b[skipSpace(b):]) != "object" {
		var cc map[string]json.RawMessage
		if err := json.Unmarshal(b, &cc); err != nil {
			return nil, Usage{}, errs.Wrap(errs.Upstream, err, "the engine's answer is not a chat completion")
		}
		return nil, Usage{}, errs.E(errs.Upstream, "the engine answered without usage") // null
	}
	var buf [16]member
	ms, err := objectMembers(buf[:0], b, jsonscan.All(b))
	if err != nil {
		return nil, Usage{}, errs.Wrap(errs.Upstream, err, "the engine's answer is not a chat completion")
	}
	ms = lastOfEach(ms)
	var usage, choices *jsonscan.Span
	hasID, hasObject, hasModel := false, false, false
	for i := range ms {
		switch ms[i].key {
		case "usage":
			usage = &ms[i].at
		case "choices":
			choices = &ms[i].at
		case "id":
			hasID = true
		case "object":
			hasObject = true
		case "model":
			hasModel = true
		}
	}
	if usage == nil {
		return nil, Usage{}, errs.E(errs.Upstream, "the engine answered without usage")
	}
	u, ok := readUsage(b, *usage)
	if !ok {
		return nil, Usage{}, errs.E(errs.Upstream, "the engine answered without usage")
	}
	if choices == nil {
		return nil, Usage{}, choicesError(nil)
	}
	out := make([]byte, 0, len(b)+len(id)+len(model)+64)
	out = append(out, '{')
	put := func(key string) {
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = appendKey(out, key)
	}
	if !hasID {
		put("id")
		out = appendString(out, id)
	}
	if !hasObject {
		put("object")
		out = append(out, chatCompletionObject...)
	}
	if !hasModel {
		put("model")
		out = appendString(out, model)
	}
	for _, m := range ms {
		put(m.key)
		switch m.key {
		case "id":
			out = appendString(out, id)
		case "object":
			out = append(out, chatCompletionObject...)
		case "model":
			out = appendString(out, model)
		case "choices":
			if out, err = appendChoices(out, b, m.at); err != nil {
				return nil, Usage{}, err
			}
		default:
			out = append(out, b[m.at.Start:m.at.End]...)
		}
	}
	return append(out, '}'), u, nil
}

// skipSpace returns the offset of b's first byte that is not whitespace.
func skipSpace(b []byte) int {
	for i, c := range b {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return i
		}
	}
	return len(b)
}

// choicesError is the error for choices that are not a list of objects:
// encoding/json's own, as decoding them reports it.
func choicesError(raw []byte) error {
	var choices []map[string]json.RawMessage
	err := json.Unmarshal(raw, &choices)
	if err == nil {
		err = jsonscan.ErrMalformed // not reached: the caller found them malformed
	}
	return errs.Wrap(errs.Upstream, err, "the engine's choices are malformed")
}

// appendChoices appends the choices at v in b as encoding/json writes
// them decoded into []map[string]json.RawMessage, each message.tool_calls
// [] where it is missing or null.
func appendChoices(out, b []byte, v jsonscan.Span) ([]byte, error) {
	raw := b[v.Start:v.End]
	switch raw[0] {
	case 'n':
		return append(out, "null"...), nil
	case '[':
	default:
		return nil, choicesError(raw)
	}
	out = append(out, '[')
	err := jsonscan.Elements(b, v, func(i int, c jsonscan.Span) error {
		if i > 0 {
			out = append(out, ',')
		}
		switch b[c.Start] {
		case 'n':
			out = append(out, "null"...)
			return nil
		case '{':
		default:
			return choicesError(raw)
		}
		var buf [8]member
		ms, err := objectMembers(buf[:0], b, c)
		if err != nil {
			return choicesError(raw)
		}
		for j := len(ms) - 1; j >= 0; j-- {
			if ms[j].key == "message" { // the last one stands
				ms[j].set = messageWithToolCalls(b, ms[j].at)
				break
			}
		}
		out = appendAsMap(out, b, ms)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return append(out, ']'), nil
}

// messageWithToolCalls returns the message at v in b with tool_calls []
// where it has none or null, as encoding/json writes the map it decodes
// from it, or nil to leave the message as it is: not an object, or with
// tool_calls of its own.
func messageWithToolCalls(b []byte, v jsonscan.Span) []byte {
	if b[v.Start] != '{' {
		return nil
	}
	var buf [8]member
	ms, err := objectMembers(buf[:0], b, v)
	if err != nil {
		return nil
	}
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].key == "tool_calls" {
			if string(b[ms[i].at.Start:ms[i].at.End]) != "null" {
				return nil
			}
			break
		}
	}
	ms = append(ms, member{key: "tool_calls", set: []byte("[]")})
	return appendAsMap(make([]byte, 0, v.End-v.Start+16), b, ms)
}

// readUsage reads the usage at v in b as encoding/json decodes it into a
// *Usage, without reflection: names matched ignoring case, the last of
// duplicates standing, null leaving a field as it is, and anything that is
// not an integer in range refused. It reports false where decoding would
// fail or leave the usage nil (null).
func readUsage(b []byte, v jsonscan.Span) (Usage, bool) {
	var u Usage
	if b[v.Start] != '{' {
		return u, false
	}
	ok := true
	err := jsonscan.Members(b, v, func(key string, at jsonscan.Span) error {
		lit := b[at.Start:at.End]
		switch {
		case strings.EqualFold(key, "prompt_tokens"):
			ok = readInt(lit, &u.PromptTokens) && ok
		case strings.EqualFold(key, "completion_tokens"):
			ok = readInt(lit, &u.CompletionTokens) && ok
		case strings.EqualFold(key, "total_tokens"):
			ok = readInt(lit, &u.TotalTokens) && ok
		case strings.EqualFold(key, "prompt_tokens_details"):
			switch lit[0] {
			case 'n':
			case '{':
				return jsonscan.Members(b, at, func(key string, at jsonscan.Span) error {
					if strings.EqualFold(key, "cached_tokens") {
						ok = readInt(b[at.Start:at.End], &u.PromptTokensDetails.CachedTokens) && ok
					}
					return nil
				})
			default:
				ok = false
			}
		}
		return nil
	})
	return u, ok && err == nil
}

// readInt stores in p the JSON literal lit as encoding/json decodes it
// into an int: null leaves p as it is; anything but an integer that fits
// is refused.
func readInt(lit []byte, p *int) bool {
	if string(lit) == "null" {
		return true
	}
	neg := lit[0] == '-'
	digits := lit
	if neg {
		digits = lit[1:]
	}
	if len(digits) == 0 || len(digits) > 19 {
		return false
	}
	var n uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + uint64(c-'0')
	}
	switch {
	case neg && n <= 1<<63:
		*p = int(-int64(n-1) - 1)
	case !neg && n < 1<<63:
		*p = int(n)
	default:
		return false
	}
	return true
}
