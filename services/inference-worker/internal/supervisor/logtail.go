package supervisor

import (
	"strings"
	"sync"
)

// logTail keeps the last lines an engine wrote, bounded both in lines and
// in bytes. It is safe for concurrent use.
type logTail struct {
	maxLines, maxBytes int

	mu    sync.Mutex
	lines []string
	bytes int // the sum of len(line)+1 over lines
}

func newLogTail(maxLines, maxBytes int) *logTail {
	return &logTail{maxLines: max(maxLines, 1), maxBytes: max(maxBytes, 1)}
}

// add appends one line (without its newline), dropping the oldest lines
// past either bound. A line longer than the byte bound keeps its end.
func (t *logTail) add(line string) {
	if len(line)+1 > t.maxBytes {
		line = line[len(line)+1-t.maxBytes:]
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, line)
	t.bytes += len(line) + 1
	drop := 0
	for len(t.lines)-drop > t.maxLines || t.bytes > t.maxBytes {
		t.bytes -= len(t.lines[drop]) + 1
		drop++
	}
	if drop > 0 {
		// Copy rather than reslice, so the backing array does not grow
		// without bound over a long-lived instance.
		t.lines = append(t.lines[:0:0], t.lines[drop:]...)
	}
}

// String returns the kept lines, each ending in a newline.
func (t *logTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	b.Grow(t.bytes)
	for _, l := range t.lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}
