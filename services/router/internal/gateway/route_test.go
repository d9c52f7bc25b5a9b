package gateway

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/modelport/modelport/services/router/internal/routing"
)

// TestRouteCopiesThePrefix: what the routing policy reads of a chat
// request is its messages up to the first user message, copied out of the
// body (which is let go of once written to the engine) and no more than
// routing.PrefixKey hashes, so a request with megabytes of inline images
// keeps only that; its key is the key of the messages as sent.
func TestRouteCopiesThePrefix(t *testing.T) {
	img := base64.StdEncoding.EncodeToString(make([]byte, 3<<20))
	system := `"You are terse. ` + strings.Repeat("Answer in one line. ", 10) + `"`
	tests := []struct {
		name      string
		messages  string // the JSON array
		wantRoles []string
		wantBytes int // of content copied, at most
	}{
		{
			name:      "a conversation",
			messages:  `[{"role":"system","content":` + system + `},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"more"}]`,
			wantRoles: []string{"system", "user"},
			wantBytes: len(system) + len(`"hi"`),
		},
		{
			name: "an inline image in the first user message",
			messages: `[{"role":"system","content":` + system + `},{"role":"user","content":[{"type":"text","text":"what is it?"},` +
				`{"type":"image_url","image_url":{"url":"data:image/png;base64,` + img + `"}}]},{"role":"assistant","content":"a cat"}]`,
			wantRoles: []string{"system", "user"},
			wantBytes: routing.DefaultPrefixBytes,
		},
		{
			name:      "no user message",
			messages:  `[{"role":"system","content":` + system + `},{"role":"assistant","content":"hello"}]`,
			wantRoles: []string{"system", "assistant"},
			wantBytes: len(system) + len(`"hello"`),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(`{"model":"m","messages":` + tc.messages + `}`)
			p, err := parseChat(body, 20<<20)
			if err != nil {
				t.Fatal(err)
			}
			// The key of every message as sent, read in place.
			var sent []routing.Message
			for i, m := range p.Messages {
				sent = append(sent, routing.Message{Role: m.Role, Content: bytes.Clone(body[p.content[i].Start:p.content[i].End])})
			}
			wantKey, _ := routing.PrefixKey(sent, routing.DefaultPrefixBytes)

			r := p.route(body)
			var roles []string
			n := 0
			for _, m := range r.Messages {
				roles = append(roles, m.Role)
				n += len(m.Content)
			}
			if strings.Join(roles, ",") != strings.Join(tc.wantRoles, ",") {
				t.Errorf("roles %v, want %v", roles, tc.wantRoles)
			}
			if n > tc.wantBytes {
				t.Errorf("%d bytes of content kept, want at most %d", n, tc.wantBytes)
			}
			for i := range body {
				body[i] = 'x' // the body let go of and its memory reused
			}
			if key, ok := routing.PrefixKey(r.Messages, routing.DefaultPrefixBytes); !ok || key != wantKey {
				t.Errorf("key %x after the body changed, want %x: the request routes by bytes it does not own", key, wantKey)
			}
		})
	}
}

// TestUsageInKeepsCachedTokens: an answer too large to deliver is metered
// with the cached prompt tokens its usage reports.
func TestUsageInKeepsCachedTokens(t *testing.T) {
	tail := []byte(`xxxx"}}],"usage":{"prompt_tokens":900,"completion_tokens":70000,"total_tokens":70900,"prompt_tokens_details":{"cached_tokens":768}}}`)
	u, ok := usageIn(tail)
	if !ok || u.PromptTokens != 900 || u.PromptTokensDetails.CachedTokens != 768 {
		t.Errorf("usageIn = %+v, %v; want 900 prompt tokens, 768 of them cached", u, ok)
	}
}
