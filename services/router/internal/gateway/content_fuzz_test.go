package gateway

import (
	"encoding/json"
	"testing"
)

// referenceHasContent is hasContent as a decode into the fields it reads:
// the reference the scan is held to.
func referenceHasContent(choices json.RawMessage) bool {
	var cs []struct {
		Text  *string `json:"text"`
		Delta struct {
			Content          *string         `json:"content"`
			ReasoningContent *string         `json:"reasoning_content"`
			ToolCalls        json.RawMessage `json:"tool_calls"`
		} `json:"delta"`
	}
	if json.Unmarshal(choices, &cs) != nil {
		return false
	}
	for _, c := range cs {
		d := c.Delta
		if c.Text != nil && *c.Text != "" {
			return true
		}
		if d.Content != nil && *d.Content != "" || d.ReasoningContent != nil && *d.ReasoningContent != "" ||
			len(d.ToolCalls) > 0 && string(d.ToolCalls) != "null" && string(d.ToolCalls) != "[]" {
			return true
		}
	}
	return false
}

// FuzzHasContent holds hasContent to what decoding the choices says, on
// every valid JSON value.
func FuzzHasContent(f *testing.F) {
	for _, seed := range []string{
		`[{"index":0,"delta":{"role":"assistant","content":""}}]`,
		`[{"index":0,"delta":{"content":"a"}}]`,
		`[{"delta":{"content":"a"},"delta":{}}]`,
		`[{"delta":{"content":"a"},"delta":null}]`,
		`[{"delta":{"content":"a","Content":null}}]`,
		`[{"delta":{"CONTENT":"\u0000"}}]`,
		`[{"delta":{"reaſoning_content":"x"}}]`,
		`[{"delta":{"tool_calls":[ ]}}]`,
		`[{"delta":{"tool_calls":null}}]`,
		`[{"delta":{"tool_calls":[{"id":"c"}]}}]`,
		`[{"text":"a"},5]`,
		`[null,{"text":"x"}]`,
		`[{"text":5,"delta":{"content":"a"}}]`,
		`[{"delta":"x"}]`,
		`{"delta":{"content":"a"}}`,
		`null`, `[]`, `"x"`,
		`[{"delta":{"content":"a"}},{"delta":{"content":7}}]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, choices []byte) {
		if !json.Valid(choices) {
			return
		}
		if got, want := hasContent(choices), referenceHasContent(choices); got != want {
			t.Fatalf("hasContent(%s) = %v, decoding says %v", choices, got, want)
		}
	})
}
