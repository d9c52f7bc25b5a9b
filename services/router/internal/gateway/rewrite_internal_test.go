package gateway

import (
	"encoding/json"
	"testing"
)

// TestRewriteAnswer: the id and model are spliced into an engine's
// answer, added where it has none, and everything else stays as the
// engine wrote it.
func TestRewriteAnswer(t *testing.T) {
	for _, tc := range []struct {
		name, in, id, want string
		usage              Usage
	}{
		{"replaced", `{"id":"cmpl-1","object":"text_completion","model":"served","choices":[{"text":"a < b"}],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}`, "cmp-x",
			`{"id":"cmp-x","object":"text_completion","model":"u-1/m","choices":[{"text":"a < b"}],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}`, Usage{PromptTokens: 2, CompletionTokens: 3, TotalTokens: 5}},
		{"no id asked, spacing kept", "{ \"object\" : \"list\",\n \"data\": [ {\"embedding\": [0.6, 0.8]} ],\n \"model\" : \"served\", \"usage\": {\"prompt_tokens\": 4, \"total_tokens\": 4} }\n", "",
			"{ \"object\" : \"list\",\n \"data\": [ {\"embedding\": [0.6, 0.8]} ],\n \"model\" : \"u-1/m\", \"usage\": {\"prompt_tokens\": 4, \"total_tokens\": 4} }\n", Usage{PromptTokens: 4, TotalTokens: 4}},
		{"added where missing", `{"usage":{"prompt_tokens":1,"total_tokens":1}}`, "cmp-y",
			`{"id":"cmp-y","model":"u-1/m","usage":{"prompt_tokens":1,"total_tokens":1}}`, Usage{PromptTokens: 1, TotalTokens: 1}},
		{"the last of a duplicate key", `{"model":"a","model":"b","usage":{"prompt_tokens":1}}`, "",
			`{"model":"a","model":"u-1/m","usage":{"prompt_tokens":1}}`, Usage{PromptTokens: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, u, err := rewriteAnswer([]byte(tc.in), tc.id, "u-1/m", "an answer")
			if err != nil {
				t.Fatal(err)
			}
			if string(out) != tc.want || u != tc.usage || !json.Valid(out) {
				t.Errorf("got %s, usage %+v\nwant %s, usage %+v", out, u, tc.want, tc.usage)
			}
		})
	}
	for _, bad := range []string{``, `[]`, `{"model":"x"}`, `{"usage":null}`, `{"usage":{"prompt_tokens":"2"}}`, `{"a":1`, `null`} {
		if _, _, err := rewriteAnswer([]byte(bad), "id", "m", "an answer"); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
