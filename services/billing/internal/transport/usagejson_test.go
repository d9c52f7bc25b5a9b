package transport

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// TestUsageFieldsMatchTheType fails when a field is added to
// events.RequestCompletedV1 that the plain decoder does not know: it
// would skip the new member and decode the event without it.
func TestUsageFieldsMatchTheType(t *testing.T) {
	var names []string
	var walk func(reflect.Type)
	walk = func(typ reflect.Type) {
		for f := range typ.Fields() {
			if f.Anonymous {
				walk(f.Type)
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			names = append(names, name)
		}
	}
	walk(reflect.TypeFor[events.RequestCompletedV1]())
	slices.Sort(names)
	known := slices.Sorted(slices.Values(usageFields))
	if !slices.Equal(names, known) {
		t.Fatalf("events.RequestCompletedV1 has the JSON fields %v; the plain decoder knows %v", names, known)
	}
	// And each of them is decoded: a member with a value of the wrong
	// type is left to encoding/json, which a skipped member would not be.
	for _, f := range usageFields {
		if _, ok := decodeUsagePlain([]byte(`{"` + f + `":{}}`)); ok {
			t.Errorf("member %s holding an object decoded as plain: the decoder skips it", f)
		}
	}
}

func plainUsage() events.RequestCompletedV1 {
	at := time.Date(2025, 5, 14, 9, 31, 12, 208377000, time.UTC)
	return events.RequestCompletedV1{
		Meta: events.Meta{ID: "0196ce22-3bd0-7f09-b34b-7a1e85d2c6f4", OccurredAt: at}, RequestID: "6f3a9c1e04b84d7fa2e95b0c813d7e46",
		ServiceID: "5d1f0c8e-2b7a-4e39-9c61-7f4a3b2d9e05", OwnerID: "8105f7322477", AccessName: "u-8105f7322477/support-bot",
		BaseModel: "qwen2.5-7b-instruct", APIKeyID: "e4b7c2d9-5a18-4f36-8b0e-92c1d7a3f650", InstanceID: "b8e2a4c7-61d3-4f90-a5e8-3c0d9b7f1a24",
		Endpoint: "/v1/chat/completions", Status: 200, PromptTokens: 412, CompletionTokens: 187, TotalTokens: 599,
		StartedAt: at.Add(-2 * time.Second), FinishedAt: at, CachedTokens: 384,
	}
}

// plainCases are usage events in JSON, and whether the plain decoder
// takes each or leaves it to encoding/json.
func plainCases(t testing.TB) []struct {
	name  string
	data  string
	plain bool
} {
	marshal := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	ev := plainUsage()
	compact := marshal(ev)
	indented, err := json.MarshalIndent(ev, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	head := `{"event_id":"0196ce22-3bd0-7f09-b34b-7a1e85d2c6f4","occurred_at":"2025-05-14T09:31:12.208377Z",`
	return []struct {
		name  string
		data  string
		plain bool
	}{
		{"as a publisher encodes it", compact, true},
		{"indented", string(indented), true},
		{"with surrounding whitespace", " \n" + compact + "\r\n\t", true},
		{"unknown members of every kind", strings.TrimSuffix(compact, "}") +
			`,"extra":{"a":[1,-2.5e+3,0.1,true,false,null,"\u00e9\"\\\/\b\f\n\r\t",{}],"b":[]},"z":"caf` + "\xe9" + `"}`, true},
		{"empty object", `{}`, true},
		{"a key twice, the last kept", head + `"status":500,"status":200}`, true},
		{"time with an offset", head + `"started_at":"2025-05-14T11:31:12+02:00"}`, true},
		{"negative and zero", head + `"prompt_tokens":-0,"completion_tokens":-7}`, true},

		{"escape in a known string", head + `"endpoint":"\/v1"}`, false},
		{"non-ASCII in a known string", head + `"base_model":"qwén"}`, false},
		{"escape in a key", head + `"st\u0061tus":200}`, false},
		{"key in another case", head + `"Status":200}`, false},
		{"key with a Kelvin sign", head + `"api_` + "\u212a" + `ey_id":"x"}`, false},
		{"null", head + `"status":null}`, false},
		{"number with a fraction", head + `"status":200.0}`, false},
		{"number with an exponent", head + `"status":2e2}`, false},
		{"number too long", head + `"prompt_tokens":9223372036854775808}`, false},
		{"leading zero", head + `"status":0200}`, false},
		{"number as a string", head + `"status":"200"}`, false},
		{"time not RFC 3339", head + `"started_at":"2025-05-14 09:31:09"}`, false},
		{"trailing comma", head + `"status":200,}`, false},
		{"trailing data", compact + `{}`, false},
		{"truncated", compact[:len(compact)-1], false},
		{"not an object", `[]`, false},
		{"malformed unknown member", head + `"x":[1,]}`, false},
		{"control character in an unknown string", head + `"x":"a` + "\x01" + `"}`, false},
		{"bad escape in an unknown string", head + `"x":"\x"}`, false},
		{"nested too deep", head + `"x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, false},
	}
}

// TestDecodeUsagePlain checks which forms the plain decoder takes (the
// plain form publishers write must never be left to encoding/json, or
// billing is slow for nothing) and that each is the event encoding/json
// decodes.
func TestDecodeUsagePlain(t *testing.T) {
	for _, tc := range plainCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := decodeUsagePlain([]byte(tc.data))
			if ok != tc.plain {
				t.Fatalf("decoded as plain: %v, want %v", ok, tc.plain)
			}
			if !ok {
				return
			}
			var want events.RequestCompletedV1
			if err := json.Unmarshal([]byte(tc.data), &want); err != nil {
				t.Fatalf("decoded as plain, but encoding/json refuses it: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decoded %+v, encoding/json %+v", got, want)
			}
		})
	}
	// The contract's example is plain.
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "..", "schemas", "events", "testdata", "usage.request.completed.v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := decodeUsagePlain(b); !ok {
		t.Fatal("the contract's example is left to encoding/json")
	}
}

// FuzzDecodeUsage checks that billing decodes usage events as it did with
// encoding/json alone: any payload is accepted or refused alike, a refusal
// with the same error and kind (so it is dead-lettered with the same
// reason), and an accepted event is the same event. go test runs the
// seeds: the contract's usage examples and the cases above.
func FuzzDecodeUsage(f *testing.F) {
	examples, err := filepath.Glob(filepath.Join("..", "..", "..", "..", "schemas", "events", "testdata", "usage.*.json"))
	if err != nil || len(examples) == 0 {
		f.Fatalf("no usage examples to seed with (%v)", err)
	}
	for _, path := range examples {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, tc := range plainCases(f) {
		f.Add([]byte(tc.data))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var want events.RequestCompletedV1
		wantErr := natsx.Decode(data, &want)
		decoded := wantErr == nil
		if wantErr == nil {
			wantErr = billing.Check(want)
		}
		got, gotErr := decodeUsage("", data)
		switch {
		case (gotErr == nil) != (wantErr == nil):
			t.Fatalf("decodeUsage: %v, encoding/json and billing.Check: %v", gotErr, wantErr)
		case gotErr != nil && (gotErr.Error() != wantErr.Error() || errs.KindOf(gotErr) != errs.KindOf(wantErr)):
			t.Fatalf("refused with %v (%v), want %v (%v)", gotErr, errs.KindOf(gotErr), wantErr, errs.KindOf(wantErr))
		case gotErr == nil && !reflect.DeepEqual(got, want):
			t.Fatalf("decoded %+v, want %+v", got, want)
		}
		if plain, ok := decodeUsagePlain(data); ok {
			if !decoded {
				t.Fatalf("decoded as plain, but encoding/json refuses it")
			}
			if !reflect.DeepEqual(plain, want) {
				t.Fatalf("decoded as plain %+v, encoding/json %+v", plain, want)
			}
		}
	})
}

// BenchmarkDecodeUsage compares the plain decoder with encoding/json on
// the form publishers write.
func BenchmarkDecodeUsage(b *testing.B) {
	data, err := json.Marshal(plainUsage())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("plain", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := decodeUsagePlain(data); !ok {
				b.Fatal("not plain")
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var ev events.RequestCompletedV1
			if err := natsx.Decode(data, &ev); err != nil {
				b.Fatal(err)
			}
		}
	})
}
