package gateway

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestLineReaderLongEvents: events and lines longer than the read buffer
// (a chunk of logprobs or of a tool call's arguments) are read whole,
// whatever the engine's writes and line ends, and one over the limit is
// refused.
func TestLineReaderLongEvents(t *testing.T) {
	long := func(n int) string { return `{"x":"` + strings.Repeat("a", n) + `"}` }
	tests := []struct {
		name string
		body string
	}{
		{"a line just over the buffer", "data: " + long(readBuffer) + "\n\n"},
		{"lines of many buffers", "data: " + long(10*readBuffer+7) + "\n\ndata: " + long(3*readBuffer) + "\n\n"},
		{"CRLF across a buffer's end", "data: " + long(readBuffer-len("data: ")-len(`{"x":""}`)-1) + "\r\n\r\ndata: [DONE]\r\n\r\n"},
		{"multi-line data over the buffer", "data: " + long(2*readBuffer) + "\ndata: " + long(2*readBuffer) + "\n\n"},
		{"short and long in turn", "data: {}\n\ndata: " + long(5*readBuffer) + "\n\ndata: {}\n\n"},
		{"over the limit", "data: " + long(1<<20) + "\n\n"},
	}
	for _, tc := range tests {
		for _, write := range []int{1, 1000, readBuffer - 1, 1 << 20} {
			lr := newLineReader(&chunkedReader{b: []byte(tc.body), n: write})
			lr.max = 512 << 10
			want, wantTooLarge := referenceEvents([]byte(tc.body), lr.max)
			got, err := readEvents(lr)
			lr.release()
			if len(got) != len(want) {
				t.Fatalf("%s, writes of %d: %d events, want %d", tc.name, write, len(got), len(want))
			}
			for i := range got {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("%s, writes of %d: event %d differs (%d bytes, want %d)", tc.name, write, i, len(got[i]), len(want[i]))
				}
			}
			if tooLarge := errors.Is(err, errEventTooLarge); tooLarge != wantTooLarge || !tooLarge && !errors.Is(err, io.EOF) {
				t.Fatalf("%s, writes of %d: ended with %v, want too large: %v", tc.name, write, err, wantTooLarge)
			}
		}
	}
}
