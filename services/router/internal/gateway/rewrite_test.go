package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/modelport/modelport/libs/state"
)

// referenceRewrite is what rewrite must agree with, written the slow and
// obvious way: decode the chunk as encoding/json reads it (the last of
// duplicate names wins), set the id and the model, drop the usage where
// the client did not ask for it, skip a final chunk the client did not
// ask for.
func referenceRewrite(data []byte, opts streamOptions, id, model string) (out map[string]any, skip, malformed bool) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil || m == nil {
		return nil, false, true
	}
	final := string(bytes.TrimSpace(m["choices"])) == "[]"
	switch {
	case final && !opts.IncludeUsage:
		return nil, true, false
	case !final && !opts.ContinuousUsageStats:
		delete(m, "usage")
	}
	m["id"], _ = json.Marshal(id)
	m["model"], _ = json.Marshal(model)
	b, _ := json.Marshal(m)
	_ = json.Unmarshal(b, &out)
	return out, false, false
}

// FuzzRewrite: the spliced rewrite of an engine chunk reads, as JSON, the
// same as the reference, for every combination of what the client asked.
func FuzzRewrite(f *testing.F) {
	for _, seed := range []string{
		`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}`,
		`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}`,
		`{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4},"model":"a","model":"b"}`,
		` {"model":"m","usage":null,"choices":[ ] ,"id":1} `,
		"{\"choices\":\n[{\"delta\":\r\n{\"content\":\"a\"}}]}",
		`{"\u0069d":"x","mo\"del":1,"é":[],"choices":[{"delta":{"role":"assistant"}}]}`,
		`{}`, `null`, `[]`, `{"id":`, `"chunk"`,
	} {
		f.Add([]byte(seed), false, false)
	}
	f.Fuzz(func(t *testing.T, data []byte, includeUsage, continuous bool) {
		opts := streamOptions{IncludeUsage: includeUsage, ContinuousUsageStats: continuous}
		s := &Stream{g: &Gateway{}, ctx: context.Background(), opts: opts, id: "chatcmpl-mp", svc: state.Service{AccessName: "u-a/chat"}, up: &upstream{fail: func() {}}}
		out, skip, err := s.rewrite(bytes.Clone(data))
		want, wantSkip, malformed := referenceRewrite(data, opts, s.id, s.svc.AccessName)
		var e map[string]json.RawMessage
		if json.Unmarshal(data, &e) == nil && e != nil {
			if _, ok := e["error"]; ok {
				if err == nil {
					t.Fatalf("%q: an engine's error event passed as a chunk", data)
				}
				return
			}
		}
		switch {
		case malformed:
			if err == nil {
				t.Fatalf("%q: malformed, yet rewritten to %q", data, out)
			}
			return
		case err != nil:
			t.Fatalf("%q: %v", data, err)
		case skip != wantSkip:
			t.Fatalf("%q: skip %v, want %v", data, skip, wantSkip)
		case skip:
			return
		}
		if bytes.ContainsAny(out, "\r\n") {
			t.Fatalf("%q rewritten to %q: a line break ends the client's event early", data, out)
		}
		var got map[string]any
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%q rewritten to invalid JSON %q: %v", data, out, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q rewritten to %q;\nreads %v,\nwant  %v", data, out, got, want)
		}
	})
}
