// Package errs is Modelport's small closed set of error kinds. Domain code
// returns them; each edge (HTTP, JetStream) maps a kind to its own answer in
// one table.
package errs

import (
	"errors"
	"fmt"
	"time"
)

// Kind classifies an error by what the caller can do about it.
type Kind uint8

// The kinds. Internal is the zero value: an error without a kind is a bug or
// an outage the caller cannot fix.
const (
	Internal Kind = iota
	Invalid
	NotFound
	Conflict
	Unauthorized
	Forbidden
	RateLimited
	Unavailable
	// TooLarge is a request body or part over its limit.
	TooLarge
	// Upstream is an engine that failed or answered nonsense.
	Upstream
	// Timeout is an engine that did not answer in time.
	Timeout
)

var kindNames = [...]string{"internal", "invalid", "not_found", "conflict", "unauthorized", "forbidden", "rate_limited", "unavailable", "too_large", "upstream_error", "timeout"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Error is a domain decision: a kind, a message safe to show to the caller,
// the offending parameter where there is one, and an optional cause.
type Error struct {
	Kind  Kind
	Msg   string
	Param string
	Err   error
	// RetryAfter tells a RateLimited or Unavailable caller when to retry.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// E returns an *Error of the given kind with a formatted message.
func E(kind Kind, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// InvalidParam returns an Invalid error that names the request parameter at fault.
func InvalidParam(param, format string, args ...any) error {
	return &Error{Kind: Invalid, Param: param, Msg: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error of the given kind that keeps err as its cause.
func Wrap(kind Kind, err error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...), Err: err}
}

// KindOf reports the kind of the first *Error in err's chain, or Internal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Internal
}

// As returns the first *Error in err's chain.
func As(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}
