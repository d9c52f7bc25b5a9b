package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
)

// The scanner below walks JSON the gateway has already decoded once
// (decodeBody checks it is valid), to find where values sit in the body
// without copying them: the content of each message, an image URL, the
// stream options. Offsets are into the body, so the request for the
// engine can be spliced together from the client's bytes.

// errScan is JSON the scanner cannot walk; decodeBody refuses such bodies
// first, so it is a bug if it reaches a client.
var errScan = errors.New("malformed JSON")

// span is the value at b[start:end].
type span struct{ start, end int }

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

// valueEnd returns the offset just past the JSON value that starts at i
// (after any whitespace).
func valueEnd(b []byte, i int) (int, error) {
	i = skipSpace(b, i)
	if i >= len(b) {
		return 0, errScan
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
		return 0, errScan
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
	return 0, errScan
}

// members calls fn for each member of the object at v, in order, with its
// key as encoding/json reads it and its value's span. It stops at fn's
// first error. A value that is not an object has no members.
func members(b []byte, v span, fn func(key string, val span) error) error {
	i := skipSpace(b, v.start)
	if i >= v.end || b[i] != '{' {
		return nil
	}
	i = skipSpace(b, i+1)
	if i < v.end && b[i] == '}' {
		return nil
	}
	for i < v.end {
		i = skipSpace(b, i)
		if i >= v.end || b[i] != '"' {
			return errScan
		}
		kend, err := stringEnd(b, i)
		if err != nil {
			return err
		}
		key, err := unquote(b[i:kend])
		if err != nil {
			return err
		}
		i = skipSpace(b, kend)
		if i >= v.end || b[i] != ':' {
			return errScan
		}
		vstart := skipSpace(b, i+1)
		vend, err := valueEnd(b, vstart)
		if err != nil {
			return err
		}
		if err := fn(key, span{vstart, vend}); err != nil {
			return err
		}
		i = skipSpace(b, vend)
		if i < v.end && b[i] == ',' {
			i++
			continue
		}
		if i < v.end && b[i] == '}' {
			return nil
		}
		return errScan
	}
	return errScan
}

// elements calls fn for each element of the array at v, in order. A value
// that is not an array has no elements.
func elements(b []byte, v span, fn func(i int, val span) error) error {
	i := skipSpace(b, v.start)
	if i >= v.end || b[i] != '[' {
		return nil
	}
	i = skipSpace(b, i+1)
	if i < v.end && b[i] == ']' {
		return nil
	}
	for n := 0; i < v.end; n++ {
		start := skipSpace(b, i)
		end, err := valueEnd(b, start)
		if err != nil {
			return err
		}
		if err := fn(n, span{start, end}); err != nil {
			return err
		}
		i = skipSpace(b, end)
		if i < v.end && b[i] == ',' {
			i++
			continue
		}
		if i < v.end && b[i] == ']' {
			return nil
		}
		return errScan
	}
	return errScan
}

// member returns the span of the last member named key of the object at
// v (encoding/json, like the engines' JSON readers, keeps the last of
// duplicate keys), and whether there is one.
func member(b []byte, v span, key string) (span, bool, error) {
	var found span
	ok := false
	err := members(b, v, func(k string, val span) error {
		if k == key {
			found, ok = val, true
		}
		return nil
	})
	return found, ok, err
}

// unquote returns the text of the JSON string literal q. Without escapes
// it is a plain conversion; with them, encoding/json decodes it.
func unquote(q []byte) (string, error) {
	if len(q) < 2 || q[0] != '"' || q[len(q)-1] != '"' {
		return "", errScan
	}
	if bytes.IndexByte(q, '\\') < 0 {
		return string(q[1 : len(q)-1]), nil
	}
	var s string
	if err := json.Unmarshal(q, &s); err != nil {
		return "", errScan
	}
	return s, nil
}

// kindOf names the JSON type of the value starting at b[0], as
// encoding/json's type errors do.
func kindOf(b []byte) string {
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
