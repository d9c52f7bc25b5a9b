package jsonscan_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"slices"
	"testing"

	"github.com/modelport/modelport/libs/jsonscan"
)

// TestScanner: the in-place reading finds the values encoding/json finds,
// escapes, nesting and the last of duplicate keys included.
func TestScanner(t *testing.T) {
	body := []byte(` { "a" : "x\"}]" , "b":[1, {"c":"]"}, [ ]], "\u0064":{"e":null}, "a": true } `)
	var got []string
	top := jsonscan.All(body)
	err := jsonscan.Members(body, top, func(key string, v jsonscan.Span) error {
		got = append(got, key+"="+string(body[v.Start:v.End]))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`a="x\"}]"`, `b=[1, {"c":"]"}, [ ]]`, `d={"e":null}`, `a=true`}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("members %q, want %q", got, want)
	}
	a, ok, err := jsonscan.Member(body, top, "a")
	if err != nil || !ok || string(body[a.Start:a.End]) != "true" {
		t.Errorf("member a = %q, %v, %v; want the last one, true", body[a.Start:a.End], ok, err)
	}
	b, _, _ := jsonscan.Member(body, top, "b")
	var elems []string
	if err := jsonscan.Elements(body, b, func(i int, v jsonscan.Span) error {
		elems = append(elems, string(body[v.Start:v.End]))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := []string{`1`, `{"c":"]"}`, `[ ]`}; !reflect.DeepEqual(elems, want) {
		t.Errorf("elements %q, want %q", elems, want)
	}
	for _, bad := range []string{`{"a":`, `{"a" 1}`, `{"a":"x}`, `[1,`} {
		b := []byte(bad)
		err := jsonscan.Members(b, jsonscan.All(b), func(string, jsonscan.Span) error { return nil })
		if bad[0] == '[' {
			err = jsonscan.Elements(b, jsonscan.All(b), func(int, jsonscan.Span) error { return nil })
		}
		if err == nil {
			t.Errorf("%s: walked without an error", bad)
		}
	}
}

// FuzzAppendCompact: AppendCompact writes what json.Compact writes, for
// every valid JSON value.
func FuzzAppendCompact(f *testing.F) {
	for _, seed := range []string{
		`{"a" : [1, 2 ,{"b":"x y"}], "c":"\" }"}`, " \t\n[ ]\r\n", `"a\\"`, `"\\\" "`, `{}`, `null`, "{\"\xff \": \" \u2028 <&>\"}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		if !json.Valid(src) {
			return
		}
		var want bytes.Buffer
		if err := json.Compact(&want, src); err != nil {
			t.Fatal(err)
		}
		if got := jsonscan.AppendCompact([]byte("x"), src); string(got[1:]) != want.String() || got[0] != 'x' {
			t.Fatalf("AppendCompact(%q) = %q, want %q", src, got, "x"+want.String())
		}
	})
}

// FuzzUnquote: a string literal reads as encoding/json reads it, bytes
// that are not UTF-8 included.
func FuzzUnquote(f *testing.F) {
	for _, seed := range []string{`"a"`, `"\u0069d"`, "\"\xff\xfe\"", "\"\xed\xa0\x80\"", `"\ud800"`, `"é"`, `""`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, q []byte) {
		var want string
		if json.Unmarshal(q, &want) != nil || len(q) < 2 || q[0] != '"' || q[len(q)-1] != '"' {
			return
		}
		got, err := jsonscan.Unquote(q)
		if err != nil || got != want {
			t.Fatalf("Unquote(%q) = %q, %v; want %q", q, got, err, want)
		}
	})
}

// TestUnquoteCommonNamesAllocateNothing: the names of a stream chunk are
// read without a string allocated for each, and read as any other name.
func TestUnquoteCommonNamesAllocateNothing(t *testing.T) {
	chunk := []byte(`{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}`)
	var names []string
	var walk func(v jsonscan.Span)
	walk = func(v jsonscan.Span) {
		_ = jsonscan.Members(chunk, v, func(key string, at jsonscan.Span) error {
			names = append(names, key)
			walk(at)
			return nil
		})
		_ = jsonscan.Elements(chunk, v, func(_ int, at jsonscan.Span) error {
			walk(at)
			return nil
		})
	}
	walk(jsonscan.All(chunk))
	want := []string{"id", "object", "created", "model", "choices", "index", "delta", "content", "finish_reason", "usage", "prompt_tokens", "completion_tokens", "total_tokens"}
	if !slices.Equal(names, want) {
		t.Fatalf("names %q, want %q", names, want)
	}
	for _, name := range want {
		q := []byte(`"` + name + `"`)
		if allocs := testing.AllocsPerRun(100, func() { _, _ = jsonscan.Unquote(q) }); allocs != 0 {
			t.Errorf("jsonscan.Unquote(%s) allocates %.0f times, want 0", q, allocs)
		}
	}
	if s, err := jsonscan.Unquote([]byte(`"models"`)); err != nil || s != "models" {
		t.Errorf("jsonscan.Unquote of another name: %q, %v", s, err)
	}
}
