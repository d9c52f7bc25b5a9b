package simulator_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

// Counts from the cl100k_base encoding, checked against a second,
// independent implementation of it; the first two are OpenAI's own
// examples.
func TestCountTokens(t *testing.T) {
	tests := []struct {
		text string
		want int
	}{
		{"hello world", 2},
		{"Say this is a test!", 6},
		{"", 0},
		{"hello", 1},
		{"Hello, world!", 4},
		{"the quick brown fox", 4},
		{"internationalization", 2},
		{"2024", 2},
		{"1234567", 3},
		{"3.14", 3},
		{"don't", 2},
		{"a\nb", 3},
		{"  ", 1},
		{"héllo wörld", 6},
		{"日本語", 4},
		{"你好，世界", 6},
		{"こんにちは世界", 4},
		{"👍", 3},
		{"😀😃😄", 6},
		{"🦙 llama", 4},
		{"get_weather", 2},
		{`{"simulated":true}`, 6},
		{"<|endoftext|>", 7}, // special tokens are plain text here
		{"[simulated by the Modelport simulator engine for qwen2.5-7b-instruct; not real model output]", 26},
	}
	for _, tc := range tests {
		t.Run(tc.text, func(t *testing.T) {
			if got := simulator.CountTokens(tc.text); got != tc.want {
				t.Errorf("CountTokens(%q) = %d, want %d", tc.text, got, tc.want)
			}
		})
	}
}

func TestCountTokensGrowsWithText(t *testing.T) {
	word := "token "
	prev := 0
	for n := 1; n <= 50; n++ {
		text := strings.Repeat(word, n)
		got := simulator.CountTokens(text)
		if got <= prev {
			t.Fatalf("CountTokens of %d words = %d, not more than %d for %d words", n, got, prev, n-1)
		}
		if got != simulator.CountTokens(text) {
			t.Fatalf("CountTokens(%q) is not deterministic", text)
		}
		prev = got
	}
}

// The encoding is compiled in: counting works where nothing can be
// downloaded. The child process gets an unreachable proxy for every
// scheme and an empty tiktoken cache, so a download attempt, or a cached
// copy from an earlier one, would show.
func TestCountTokensOffline(t *testing.T) {
	if os.Getenv("SIMULATOR_OFFLINE_CHILD") == "1" {
		if got, want := simulator.CountTokens("hello world"), 2; got != want {
			t.Fatalf("CountTokens = %d, want %d", got, want)
		}
		return
	}
	cache := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCountTokensOffline$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		"SIMULATOR_OFFLINE_CHILD=1",
		"HTTP_PROXY=http://127.0.0.1:1", "HTTPS_PROXY=http://127.0.0.1:1", "ALL_PROXY=http://127.0.0.1:1", "NO_PROXY=",
		"http_proxy=http://127.0.0.1:1", "https_proxy=http://127.0.0.1:1", "no_proxy=",
		"TIKTOKEN_CACHE_DIR="+cache, "DATA_GYM_CACHE_DIR="+cache,
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("counting without a network failed: %v\n%s", err, out)
	}
	if entries, _ := os.ReadDir(cache); len(entries) > 0 {
		t.Errorf("the tiktoken cache %s was written to: %d entries", cache, len(entries))
	}
}
