package gateway

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/jsonscan"
)

// referenceCompletion is what rewriteCompletion must agree with, written
// the slow and obvious way, as the router once did it: decode the answer
// into maps (the last of duplicate names wins), check the usage and the
// choices, give each message tool_calls [] where it has none or null, set
// the id, object and model, and encode it all again.
func referenceCompletion(b []byte, id, model string) ([]byte, Usage, error) {
	var err error
	var cc map[string]json.RawMessage
	if err := json.Unmarshal(b, &cc); err != nil {
		return nil, Usage{}, errs.Wrap(errs.Upstream, err, "the engine's answer is not a chat completion")
	}
	var u *Usage
	if err := json.Unmarshal(cc["usage"], &u); err != nil || u == nil {
		return nil, Usage{}, errs.E(errs.Upstream, "the engine answered without usage")
	}
	var choices []map[string]json.RawMessage
	if err := json.Unmarshal(cc["choices"], &choices); err != nil {
		return nil, Usage{}, errs.Wrap(errs.Upstream, err, "the engine's choices are malformed")
	}
	for _, ch := range choices {
		var msg map[string]json.RawMessage
		if json.Unmarshal(ch["message"], &msg) != nil || msg == nil {
			continue
		}
		if tc, ok := msg["tool_calls"]; !ok || string(tc) == "null" {
			msg["tool_calls"] = json.RawMessage("[]")
			if ch["message"], err = marshal(msg); err != nil {
				return nil, Usage{}, err
			}
		}
	}
	if cc["choices"], err = marshal(choices); err != nil {
		return nil, Usage{}, err
	}
	cc["id"], _ = marshal(id)
	cc["object"] = json.RawMessage(`"chat.completion"`)
	cc["model"], _ = marshal(model)
	out, err := marshal(cc)
	return out, *u, err
}

// referenceAnswer is what rewriteAnswer must agree with, the slow way:
// decode the answer into a map, check its usage, set the model and, when
// there is one, the id, and encode it again.
func referenceAnswer(b []byte, id, model string) ([]byte, Usage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		return nil, Usage{}, errs.E(errs.Upstream, "the engine's answer is not an answer")
	}
	var u *Usage
	if err := json.Unmarshal(m["usage"], &u); err != nil || u == nil {
		return nil, Usage{}, errs.E(errs.Upstream, "the engine answered without usage")
	}
	if id != "" {
		m["id"], _ = marshal(id)
	}
	m["model"], _ = marshal(model)
	out, err := marshal(m)
	return out, *u, err
}

// sameMembers fails unless got, the answer a client gets, reads as want,
// the reference's: the same names (the last of duplicates standing), each
// value the same JSON once compacted; and where exact, the named members
// byte for byte.
func sameMembers(t *testing.T, in, got, want []byte, exact ...string) {
	t.Helper()
	var g, w map[string]json.RawMessage
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("%q rewritten to invalid JSON %q: %v", in, got, err)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("the reference wrote invalid JSON %q: %v", want, err)
	}
	names := func(m map[string]json.RawMessage) []string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		return ks
	}
	if !slices.Equal(names(g), names(w)) {
		t.Fatalf("%q rewritten to %q,\nnames %q, want %q (%q)", in, got, names(g), names(w), want)
	}
	for k, wv := range w {
		var c bytes.Buffer
		if err := json.Compact(&c, g[k]); err != nil || !bytes.Equal(c.Bytes(), wv) {
			t.Fatalf("%q rewritten to %q:\n%s = %s, want %s", in, got, k, g[k], wv)
		}
	}
	for _, k := range exact {
		if !bytes.Equal(g[k], w[k]) {
			t.Fatalf("%q rewritten to %q:\n%s = %s, want exactly %s", in, got, k, g[k], w[k])
		}
	}
}

// engineCompletion is a chat completion as engines write it.
const engineCompletion = `{"id":"chatcmpl-engine","object":"chat.completion","created":1700000000,"model":"served-name",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop","logprobs":null}],` +
	`"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17},"system_fingerprint":"fp-1"}`

// answerSeeds are engine answers for the fuzz tests to start from.
var answerSeeds = []string{
	engineCompletion,
	`{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"if a < b && c > d { return }"},"finish_reason":"stop"},` +
		`{"index":1,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":\"<b>\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`,
	"{\n  \"id\" : \"c\",\n  \"choices\" : [ { \"message\" : { \"content\" : \"a b\\n\", \"tool_calls\" : null , \"role\":\"assistant\"} } , null ],\n  \"usage\" : { \"prompt_tokens\" : 3 }\n}\n",
	`{"choices":[{"message":"text","message":{"tool_calls":[],"tool_calls":null,"b":1,"a":2}}],"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2},"model":"a","model":"b","\u0069d":7}`,
	`{"choices":null,"usage":{"completion_tokens":4}}`,
	`{"choices":[],"usage":{}}`,
	`{"choices":[7],"usage":{}}`,
	`{"choices":{},"usage":{}}`,
	`{"choices":[{"message":null},{}],"usage":{"prompt_tokens":1}}`,
	"{\"\xff\":1,\"\xfe\":2,\"choices\":[{\"\xfd\":3,\"message\":{\"\xfc\":4}}],\"usage\":{}}",
	`{"model":"x","usage":{"prompt_tokens":"2"},"choices":[]}`,
	`{"usage":null,"choices":[]}`,
	`{"object":"list","data":[{"embedding":[0.1, 0.2]}],"model":"m","usage":{"prompt_tokens":4,"total_tokens":4}}`,
	`{}`, `null`, `[]`, `"answer"`, `{"a":`, ``, ` {"usage":{},"choices":[]} `,
}

// FuzzRewriteCompletion: the spliced chat completion reads, as JSON, the
// same as the reference's, with its choices byte for byte as the
// reference writes them, the same usage, and the same error where the
// reference refuses the answer.
func FuzzRewriteCompletion(f *testing.F) {
	for _, seed := range answerSeeds {
		f.Add([]byte(seed), "u-a/chat")
	}
	f.Add([]byte(engineCompletion), "u-ä/<chat>\"")
	const id = "cmp-0123456789abcdef0123456789abcdef"
	f.Fuzz(func(t *testing.T, b []byte, model string) {
		got, gotU, err := rewriteCompletion(bytes.Clone(b), id, model)
		want, wantU, wantErr := referenceCompletion(b, id, model)
		switch {
		case wantErr != nil:
			if err == nil {
				t.Fatalf("%q: rewritten to %q, want the error %v", b, got, wantErr)
			}
			if err.Error() != wantErr.Error() || errs.KindOf(err) != errs.KindOf(wantErr) {
				t.Fatalf("%q: error %v (%v), want %v (%v)", b, err, errs.KindOf(err), wantErr, errs.KindOf(wantErr))
			}
			return
		case err != nil:
			t.Fatalf("%q: %v; the reference rewrote it to %q", b, err, want)
		}
		if gotU != wantU {
			t.Fatalf("%q: usage %+v, want %+v", b, gotU, wantU)
		}
		sameMembers(t, b, got, want, "choices", "id", "object", "model")
	})
}

// FuzzRewriteAnswer: a spliced legacy completion or embeddings answer
// reads, as JSON, the same as the reference's, with the same usage; an
// answer the reference refuses is refused.
func FuzzRewriteAnswer(f *testing.F) {
	for _, seed := range answerSeeds {
		f.Add([]byte(seed), "u-a/m", true)
	}
	f.Fuzz(func(t *testing.T, b []byte, model string, withID bool) {
		id := ""
		if withID {
			id = "cmp-0123456789abcdef0123456789abcdef"
		}
		got, gotU, err := rewriteAnswer(bytes.Clone(b), id, model, "an answer")
		want, wantU, wantErr := referenceAnswer(b, id, model)
		switch {
		case wantErr != nil:
			if err == nil {
				t.Fatalf("%q: rewritten to %q, want an error like %v", b, got, wantErr)
			}
			return
		case err != nil:
			t.Fatalf("%q: %v; the reference rewrote it to %q", b, err, want)
		}
		if gotU != wantU {
			t.Fatalf("%q: usage %+v, want %+v", b, gotU, wantU)
		}
		sameMembers(t, b, got, want, "id", "model")
	})
}

// FuzzReadUsage: readUsage reads every usage value as decoding it into a
// *Usage does, and refuses what that refuses.
func FuzzReadUsage(f *testing.F) {
	for _, seed := range []string{
		`{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}`,
		`{"PROMPT_TOKENS":1,"prompt_tokens":2,"prompt_tokens_details":{"cached_tokens":1},"prompt_tokens_details":null}`,
		`{"prompt_tokens":1.5}`, `{"prompt_tokens":1e2}`, `{"prompt_tokens":"2"}`, `{"prompt_tokens":-9223372036854775808}`,
		`{"total_tokens":9223372036854775808}`, `{"total_tokens":-0}`, `{"prompt_tokens_details":7}`, `{"prompt_tokens_details":{"Cached_Tokens":[]}}`,
		"{\"prompt_to\u212aens\":3}", `{"completion_tokens":null,"x":{"prompt_tokens":"a"}}`, `null`, `[]`, `7`, `{}`, ` { } `,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		raw = bytes.TrimSpace(raw)
		if !json.Valid(raw) {
			return
		}
		var want *Usage
		wantOK := json.Unmarshal(raw, &want) == nil && want != nil
		got, ok := readUsage(raw, jsonscan.All(raw))
		if ok != wantOK || ok && got != *want {
			t.Fatalf("readUsage(%s) = %+v, %v; want %+v, %v", raw, got, ok, want, wantOK)
		}
	})
}

// BenchmarkRewriteCompletion measures rewriting an engine's chat
// completion, spliced, against decoding and encoding it whole (the
// reference), in the same run.
func BenchmarkRewriteCompletion(b *testing.B) {
	for _, bc := range []struct {
		name    string
		rewrite func([]byte, string, string) ([]byte, Usage, error)
	}{{"decode and encode", referenceCompletion}, {"splice", rewriteCompletion}} {
		b.Run(bc.name, func(b *testing.B) {
			in := []byte(engineCompletion)
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := bc.rewrite(in, "cmp-0123456789abcdef0123456789abcdef", "u-alice/chat"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
