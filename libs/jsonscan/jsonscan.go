// Package jsonscan walks JSON that has already been decoded once, to find
// where values sit in it without copying them: the members of an object,
// the elements of an array, each as a span of the input. It is for large
// documents (requests of megabytes of inline images) that must be checked
// and spliced rather than decoded again and again. Valid checks JSON as
// encoding/json.Valid does, at a fraction of its cost, for the engine
// answers and stream chunks the router passes on.
package jsonscan

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// ErrMalformed is JSON the scanner cannot walk. Callers check their JSON
// first (encoding/json decodes it), so meeting it is a bug.
var ErrMalformed = errors.New("malformed JSON")

// Span is the value at b[Start:End].
type Span struct{ Start, End int }

// All is the span of all of b.
func All(b []byte) Span { return Span{0, len(b)} }

// skipSpace returns the offset of the first byte at or after i that is
// not JSON whitespace.
func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// ValueEnd returns the offset just past the JSON value that starts at i
// (after any whitespace).
func ValueEnd(b []byte, i int) (int, error) {
	i = skipSpace(b, i)
	if i >= len(b) {
		return 0, ErrMalformed
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				end, err := stringEnd(b, i)
				if err != nil {
					return 0, err
				}
				i = end
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, nil
				}
			}
			i++
		}
		return 0, ErrMalformed
	default: // a number, true, false or null
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i, nil
			}
			i++
		}
		return i, nil
	}
}

// stringEnd returns the offset just past the JSON string whose opening
// quote is at i.
func stringEnd(b []byte, i int) (int, error) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1, nil
		}
	}
	return 0, ErrMalformed
}

// Members calls fn for each member of the object at v, in order, with its
// key as encoding/json reads it and its value's span. It stops at fn's
// first error. A value that is not an object has no members.
func Members(b []byte, v Span, fn func(key string, val Span) error) error {
	i := skipSpace(b, v.Start)
	if i >= v.End || b[i] != '{' {
		return nil
	}
	i = skipSpace(b, i+1)
	if i < v.End && b[i] == '}' {
		return nil
	}
	for i < v.End {
		i = skipSpace(b, i)
		if i >= v.End || b[i] != '"' {
			return ErrMalformed
		}
		kend, err := stringEnd(b, i)
		if err != nil {
			return err
		}
		key, err := Unquote(b[i:kend])
		if err != nil {
			return err
		}
		i = skipSpace(b, kend)
		if i >= v.End || b[i] != ':' {
			return ErrMalformed
		}
		vstart := skipSpace(b, i+1)
		vend, err := ValueEnd(b, vstart)
		if err != nil {
			return err
		}
		if err := fn(key, Span{vstart, vend}); err != nil {
			return err
		}
		i = skipSpace(b, vend)
		if i < v.End && b[i] == ',' {
			i++
			continue
		}
		if i < v.End && b[i] == '}' {
			return nil
		}
		return ErrMalformed
	}
	return ErrMalformed
}

// Elements calls fn for each element of the array at v, in order. A value
// that is not an array has no elements.
func Elements(b []byte, v Span, fn func(i int, val Span) error) error {
	i := skipSpace(b, v.Start)
	if i >= v.End || b[i] != '[' {
		return nil
	}
	i = skipSpace(b, i+1)
	if i < v.End && b[i] == ']' {
		return nil
	}
	for n := 0; i < v.End; n++ {
		start := skipSpace(b, i)
		end, err := ValueEnd(b, start)
		if err != nil {
			return err
		}
		if err := fn(n, Span{start, end}); err != nil {
			return err
		}
		i = skipSpace(b, end)
		if i < v.End && b[i] == ',' {
			i++
			continue
		}
		if i < v.End && b[i] == ']' {
			return nil
		}
		return ErrMalformed
	}
	return ErrMalformed
}

// Member returns the span of the last member named key of the object at
// v (encoding/json, like the engines' JSON readers, keeps the last of
// duplicate keys), and whether there is one.
func Member(b []byte, v Span, key string) (Span, bool, error) {
	var found Span
	ok := false
	err := Members(b, v, func(k string, val Span) error {
		if k == key {
			found, ok = val, true
		}
		return nil
	})
	return found, ok, err
}

// Unquote returns the text of the JSON string literal q, as encoding/json
// reads it. Without escapes, and in valid UTF-8, it is a plain
// conversion; otherwise encoding/json decodes it (each byte that is not
// UTF-8 becomes U+FFFD, so two keys that differ only there are one name,
// as they are to encoding/json).
func Unquote(q []byte) (string, error) {
	if len(q) < 2 || q[0] != '"' || q[len(q)-1] != '"' {
		return "", ErrMalformed
	}
	if bytes.IndexByte(q, '\\') < 0 {
		if s, ok := commonName(q[1 : len(q)-1]); ok {
			return s, nil
		}
		if utf8.Valid(q) {
			return string(q[1 : len(q)-1]), nil
		}
	}
	var s string
	if err := json.Unmarshal(q, &s); err != nil {
		return "", ErrMalformed
	}
	return s, nil
}

// commonName returns the names OpenAI's requests and answers use most
// without allocating a string for each, as a chunk of a stream is read
// many times over.
func commonName(b []byte) (string, bool) {
	switch string(b) { // compared without a conversion
	case "id":
		return "id", true
	case "object":
		return "object", true
	case "created":
		return "created", true
	case "model":
		return "model", true
	case "system_fingerprint":
		return "system_fingerprint", true
	case "choices":
		return "choices", true
	case "index":
		return "index", true
	case "delta":
		return "delta", true
	case "message":
		return "message", true
	case "role":
		return "role", true
	case "content":
		return "content", true
	case "text":
		return "text", true
	case "reasoning_content":
		return "reasoning_content", true
	case "tool_calls":
		return "tool_calls", true
	case "logprobs":
		return "logprobs", true
	case "finish_reason":
		return "finish_reason", true
	case "usage":
		return "usage", true
	case "prompt_tokens":
		return "prompt_tokens", true
	case "completion_tokens":
		return "completion_tokens", true
	case "total_tokens":
		return "total_tokens", true
	case "prompt_tokens_details":
		return "prompt_tokens_details", true
	case "cached_tokens":
		return "cached_tokens", true
	case "error":
		return "error", true
	case "messages":
		return "messages", true
	case "stream":
		return "stream", true
	case "stream_options":
		return "stream_options", true
	case "max_tokens":
		return "max_tokens", true
	}
	return "", false
}

// AppendCompact appends the JSON value src to dst without the whitespace
// between its tokens, byte for byte what json.Compact writes, without
// checking it: src must be valid JSON. A value with no such whitespace is
// copied whole.
func AppendCompact(dst, src []byte) []byte {
	start := 0
	for i := 0; i < len(src); i++ {
		switch src[i] {
		case '"':
			end, err := stringEnd(src, i)
			if err != nil {
				return append(dst, src[start:]...)
			}
			i = end - 1
		case ' ', '\t', '\n', '\r':
			dst = append(dst, src[start:i]...)
			start = i + 1
		}
	}
	return append(dst, src[start:]...)
}

// Kind names the JSON type of the value starting at b[0], as
// encoding/json's type errors do.
func Kind(b []byte) string {
	if len(b) == 0 {
		return "value"
	}
	switch b[0] {
	case '"':
		return "string"
	case '{':
		return "object"
	case '[':
		return "array"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	}
	return "number"
}
