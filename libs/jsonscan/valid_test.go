package jsonscan

import (
	"encoding/json"
	"strings"
	"testing"
)

var validCases = []string{
	``, ` `, `{}`, `[]`, `{} `, ` [ ] `, `{"a":1}`, `{"a":1,}`, `{,}`, `{"a"}`, `{"a":}`, `{"a" 1}`, `{1:2}`,
	`[1,]`, `[,1]`, `[1 2]`, `[1,[2,{"x":[]}]]`, `[1]]`, `[[1]`, `{"a":1}}`, `"x"`, `"x`, `"\u00e9\n\"\\\/\b\f\r\t"`,
	`"\x"`, `"\u12"`, `"\u12g4"`, "\"a\tb\"", "\"\x1f\"", "\"\x7f\xff\xfe\"", `true`, `tru`, `truex`, `false`, `null`,
	`nul`, `0`, `-0`, `01`, `-`, `1.`, `.5`, `1.5`, `1e5`, `1E+5`, `1e-5`, `1e`, `1e+`, `-1.5e10`, `1x`, `0x1`,
	`1 2`, `{"a":1} {}`, "\v{}", "{}\v", `{"a":"b"}` + "\n", `[true,false,null]`, `[truefalse]`, `{"":""}`,
	`{"a":[1,2,{"b":null}],"c":{"d":-0.5e-3}}`, `[-]`, `[--1]`, `{"a":1 , "b" : 2 }`, `]`, `}`, `:`, `,`,
	strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
	strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	strings.Repeat("[", 9999) + "{}" + strings.Repeat("]", 9999),
	strings.Repeat("[", 10000) + "{}" + strings.Repeat("]", 10000),
	strings.Repeat(`{"a":`, 10000) + "1" + strings.Repeat("}", 10000),
	strings.Repeat(`{"a":`, 10001) + "1" + strings.Repeat("}", 10001),
}

// Valid accepts exactly what encoding/json.Valid accepts.
func TestValidAgreesWithEncodingJSON(t *testing.T) {
	for _, c := range validCases {
		if got, want := Valid([]byte(c)), json.Valid([]byte(c)); got != want {
			t.Errorf("Valid(%.40q) = %v; encoding/json says %v", c, got, want)
		}
	}
}

func FuzzValid(f *testing.F) {
	for _, c := range validCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := Valid(b), json.Valid(b); got != want {
			t.Fatalf("Valid(%q) = %v; encoding/json says %v", b, got, want)
		}
	})
}

// BenchmarkValid checks a stream chunk as an engine sends it, against
// encoding/json.Valid in the same run.
func BenchmarkValid(b *testing.B) {
	chunk := []byte(`{"id":"chatcmpl-7a1b2c3d","object":"chat.completion.chunk","created":1733390000,"model":"llama-3.1-8b-instruct","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{"role":"assistant","content":" token"},"logprobs":null,"finish_reason":null}]}`)
	b.Run("jsonscan", func(b *testing.B) {
		b.SetBytes(int64(len(chunk)))
		for b.Loop() {
			if !Valid(chunk) {
				b.Fatal("invalid")
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.SetBytes(int64(len(chunk)))
		for b.Loop() {
			if !json.Valid(chunk) {
				b.Fatal("invalid")
			}
		}
	})
}
