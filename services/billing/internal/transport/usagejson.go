package transport

import (
	"time"

	"github.com/modelport/modelport/libs/events"
)

// decodeUsagePlain decodes a usage event without reflection, when data is
// in the plain form publishers write (what encoding/json's Marshal
// produces, with or without whitespace): one object whose known members
// hold strings of printable ASCII without escapes and integers without
// fraction or exponent, and whose other members are well-formed JSON.
// For anything else (an escape, a non-ASCII character, a null, a number
// with a fraction, a key that matches a field only when case is ignored,
// malformed JSON) it reports false and decodes nothing, and the caller
// decodes data with encoding/json, so the two ways accept and refuse
// alike and refusals say the same. When it reports true, the event is
// the one encoding/json would decode (FuzzDecodeUsage checks both).
//
// Decoding usage is most of billing's own CPU at high rates; this way
// takes a fraction of encoding/json's time and allocations.
func decodeUsagePlain(data []byte) (events.RequestCompletedV1, bool) {
	var ev events.RequestCompletedV1
	p := plainParser{b: data}
	p.space()
	if !p.byte('{') {
		return ev, false
	}
	p.space()
	if p.byte('}') {
		return ev, p.end()
	}
	for {
		p.space()
		key, ok := p.plainString()
		if !ok {
			return ev, false
		}
		p.space()
		if !p.byte(':') {
			return ev, false
		}
		p.space()
		if ok = p.member(&ev, key); !ok {
			return ev, false
		}
		p.space()
		if p.byte(',') {
			continue
		}
		if p.byte('}') {
			return ev, p.end()
		}
		return ev, false
	}
}

// usageFields are the JSON names of events.RequestCompletedV1's fields,
// which plainParser.member decodes; a test keeps them in step with the
// type's tags.
var usageFields = []string{
	"event_id", "occurred_at", "request_id", "service_id", "owner_id", "access_name", "base_model",
	"api_key_id", "instance_id", "endpoint", "status", "prompt_tokens", "completion_tokens",
	"total_tokens", "started_at", "finished_at", "cached_tokens",
}

// plainParser reads b from i on; each method reports false where b is not
// in the plain form decodeUsagePlain takes.
type plainParser struct {
	b []byte
	i int
}

// member decodes the value of the member named key into ev.
func (p *plainParser) member(ev *events.RequestCompletedV1, key []byte) bool {
	// A switch on string(key) compares without allocating.
	switch string(key) {
	case "event_id":
		return p.str(&ev.ID)
	case "occurred_at":
		return p.time(&ev.OccurredAt)
	case "request_id":
		return p.str(&ev.RequestID)
	case "service_id":
		return p.str(&ev.ServiceID)
	case "owner_id":
		return p.str(&ev.OwnerID)
	case "access_name":
		return p.str(&ev.AccessName)
	case "base_model":
		return p.str(&ev.BaseModel)
	case "api_key_id":
		return p.str(&ev.APIKeyID)
	case "instance_id":
		return p.str(&ev.InstanceID)
	case "endpoint":
		return p.str(&ev.Endpoint)
	case "status":
		return p.int(&ev.Status)
	case "prompt_tokens":
		return p.int(&ev.PromptTokens)
	case "completion_tokens":
		return p.int(&ev.CompletionTokens)
	case "total_tokens":
		return p.int(&ev.TotalTokens)
	case "started_at":
		return p.time(&ev.StartedAt)
	case "finished_at":
		return p.time(&ev.FinishedAt)
	case "cached_tokens":
		return p.int(&ev.CachedTokens)
	}
	// encoding/json also fills a field from a key that differs from its
	// name in case (or by Unicode folding, as 'ſ' for 's'): those are
	// left to it. Any other member is ignored, once it is seen to be
	// well-formed.
	for _, c := range key {
		if c >= 0x80 {
			return false
		}
	}
	for _, f := range usageFields {
		if asciiEqualFold(key, f) {
			return false
		}
	}
	return p.skip(0)
}

func asciiEqualFold(a []byte, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func (p *plainParser) space() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// byte consumes c if it comes next.
func (p *plainParser) byte(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// end reports whether nothing but whitespace follows.
func (p *plainParser) end() bool {
	p.space()
	return p.i == len(p.b)
}

// plainString returns the text of the string literal next, which must be
// printable ASCII without escapes, without its quotes.
func (p *plainParser) plainString() ([]byte, bool) {
	if !p.byte('"') {
		return nil, false
	}
	start := p.i
	for ; p.i < len(p.b); p.i++ {
		switch c := p.b[p.i]; {
		case c == '"':
			s := p.b[start:p.i]
			p.i++
			return s, true
		case c < 0x20 || c >= 0x80 || c == '\\':
			return nil, false
		}
	}
	return nil, false
}

func (p *plainParser) str(dst *string) bool {
	s, ok := p.plainString()
	if ok {
		*dst = string(s)
	}
	return ok
}

// time decodes an RFC 3339 time as encoding/json does: by the same
// time.Time.UnmarshalJSON, given the literal with its quotes. A time it
// refuses is left to encoding/json, which refuses it alike.
func (p *plainParser) time(dst *time.Time) bool {
	start := p.i
	if _, ok := p.plainString(); !ok {
		return false
	}
	return dst.UnmarshalJSON(p.b[start:p.i]) == nil
}

// int decodes an integer of at most 18 digits (so it cannot overflow),
// without fraction or exponent.
func (p *plainParser) int(dst *int) bool {
	neg := p.byte('-')
	start := p.i
	n := 0
	for p.i < len(p.b) && '0' <= p.b[p.i] && p.b[p.i] <= '9' {
		n = n*10 + int(p.b[p.i]-'0')
		p.i++
	}
	digits := p.i - start
	switch {
	case digits == 0 || digits > 18:
		return false
	case digits > 1 && p.b[start] == '0': // a leading zero is not JSON
		return false
	case p.i < len(p.b) && (p.b[p.i] == '.' || p.b[p.i] == 'e' || p.b[p.i] == 'E'):
		return false
	}
	if neg {
		n = -n
	}
	*dst = n
	return true
}

// maxSkipDepth bounds how deeply an ignored member may nest; deeper ones
// are left to encoding/json.
const maxSkipDepth = 32

// skip consumes one well-formed JSON value of any kind.
func (p *plainParser) skip(depth int) bool {
	if p.i >= len(p.b) || depth > maxSkipDepth {
		return false
	}
	switch c := p.b[p.i]; {
	case c == '"':
		return p.skipString()
	case c == '{' || c == '[':
		closing := byte('}')
		if c == '[' {
			closing = ']'
		}
		p.i++
		p.space()
		if p.byte(closing) {
			return true
		}
		for {
			p.space()
			if c == '{' {
				if !p.skipString() {
					return false
				}
				p.space()
				if !p.byte(':') {
					return false
				}
				p.space()
			}
			if !p.skip(depth + 1) {
				return false
			}
			p.space()
			if p.byte(',') {
				continue
			}
			return p.byte(closing)
		}
	case c == '-' || ('0' <= c && c <= '9'):
		return p.skipNumber()
	default:
		for _, lit := range []string{"true", "false", "null"} {
			if len(p.b)-p.i >= len(lit) && string(p.b[p.i:p.i+len(lit)]) == lit {
				p.i += len(lit)
				return true
			}
		}
		return false
	}
}

// skipString consumes a string literal: any bytes but control characters,
// and escapes as JSON defines them.
func (p *plainParser) skipString() bool {
	if !p.byte('"') {
		return false
	}
	for p.i < len(p.b) {
		c := p.b[p.i]
		p.i++
		switch {
		case c == '"':
			return true
		case c < 0x20:
			return false
		case c == '\\':
			if p.i >= len(p.b) {
				return false
			}
			e := p.b[p.i]
			p.i++
			switch e {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(p.b)-p.i < 4 {
					return false
				}
				for _, h := range p.b[p.i : p.i+4] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return false
					}
				}
				p.i += 4
			default:
				return false
			}
		}
	}
	return false
}

// skipNumber consumes a number as JSON defines it:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (p *plainParser) skipNumber() bool {
	p.byte('-')
	switch {
	case p.byte('0'):
	case p.digits() == 0:
		return false
	}
	if p.byte('.') && p.digits() == 0 {
		return false
	}
	if p.byte('e') || p.byte('E') {
		if !p.byte('+') {
			p.byte('-')
		}
		if p.digits() == 0 {
			return false
		}
	}
	return true
}

func (p *plainParser) digits() int {
	start := p.i
	for p.i < len(p.b) && '0' <= p.b[p.i] && p.b[p.i] <= '9' {
		p.i++
	}
	return p.i - start
}
