package supervisor

import (
	"strings"
	"testing"
)

func TestLogTail(t *testing.T) {
	tests := []struct {
		name               string
		maxLines, maxBytes int
		add                []string
		want               string
	}{
		{name: "empty", maxLines: 3, maxBytes: 100, want: ""},
		{name: "under both bounds", maxLines: 3, maxBytes: 100, add: []string{"a", "b"}, want: "a\nb\n"},
		{name: "line bound", maxLines: 2, maxBytes: 100, add: []string{"a", "b", "c"}, want: "b\nc\n"},
		{name: "byte bound", maxLines: 10, maxBytes: 8, add: []string{"aaa", "bbb", "cc"}, want: "bbb\ncc\n"},
		{name: "byte bound exactly", maxLines: 10, maxBytes: 8, add: []string{"aaa", "bbb"}, want: "aaa\nbbb\n"},
		{name: "long line keeps its end", maxLines: 10, maxBytes: 5, add: []string{"a", "0123456789"}, want: "6789\n"},
		{name: "empty lines count", maxLines: 2, maxBytes: 100, add: []string{"a", "", ""}, want: "\n\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lt := newLogTail(tc.maxLines, tc.maxBytes)
			for _, l := range tc.add {
				lt.add(l)
			}
			if got := lt.String(); got != tc.want {
				t.Errorf("tail = %q, want %q", got, tc.want)
			}
			if got := len(lt.String()); got > tc.maxBytes {
				t.Errorf("tail holds %d bytes, over %d", got, tc.maxBytes)
			}
		})
	}
}

func TestLogTailDefaults(t *testing.T) {
	p := Policy{}.withDefaults()
	lt := newLogTail(p.LogLines, p.LogBytes)
	line := strings.Repeat("x", 99)
	for range 1000 {
		lt.add(line)
	}
	if got, want := strings.Count(lt.String(), "\n"), 200; got != want {
		t.Errorf("kept %d lines, want %d", got, want)
	}
	long := strings.Repeat("y", 1023)
	for range 100 {
		lt.add(long)
	}
	if got, want := len(lt.String()), 64<<10; got != want {
		t.Errorf("kept %d bytes, want %d", got, want)
	}
}
