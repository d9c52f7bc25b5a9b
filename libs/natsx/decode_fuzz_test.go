package natsx_test

import (
	"bytes"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsx"
)

// FuzzDecodeEvent checks Decode on every event type with any payload a
// stream could hold: it never panics; a refusal is errs.Invalid, so a
// consumer terminates the message instead of retrying it forever; and an
// event it accepts encodes and decodes again to the same event and the
// same bytes, so a dead letter or a republished event says what the
// original said. The seeds are the contract's examples; go test runs them
// and the corpus in testdata/fuzz, go test -fuzz=FuzzDecodeEvent searches
// for more.
func FuzzDecodeEvent(f *testing.F) {
	examples, err := filepath.Glob(filepath.Join("..", "..", "schemas", "events", "testdata", "*.json"))
	if err != nil || len(examples) == 0 {
		f.Fatalf("no event examples to seed with (%v)", err)
	}
	for _, path := range examples {
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, seed := range []string{
		`{}`, `null`, `[]`, `"x"`, `7`, ``, `{"event_id":1}`,
		`{"occurred_at":"2025-01-02T03:04:05.123456789+14:00","started_at":"0000-01-01T00:00:00Z","finished_at":"9999-12-31T23:59:59-23:59"}`,
		`{"occurred_at":"2025-13-01T00:00:00Z"}`,
		`{"headers":{"a":["1","2"],"b":null,"c":[]},"stream_sequence":18446744073709551615}`,
		`{"prompt_tokens":1e3}`, `{"instances":-9223372036854775808}`, `{"name":"\ud800 \u0000 caf` + "\xe9" + `"}`,
	} {
		f.Add([]byte(seed))
	}
	subjects := slices.Sorted(maps.Keys(events.Registry))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, subject := range subjects {
			typ := reflect.TypeOf(events.Registry[subject])
			first := reflect.New(typ)
			if err := natsx.Decode(data, first.Interface()); err != nil {
				if k := errs.KindOf(err); k != errs.Invalid {
					t.Fatalf("%s: refused with kind %v (%v), want errs.Invalid", subject, k, err)
				}
				continue
			}
			encoded, err := json.Marshal(first.Interface())
			if err != nil {
				t.Fatalf("%s: a decoded event does not encode: %v", subject, err)
			}
			second := reflect.New(typ)
			if err := natsx.Decode(encoded, second.Interface()); err != nil {
				t.Fatalf("%s: an encoded event does not decode: %v\n%s", subject, err, encoded)
			}
			if !reflect.DeepEqual(first.Interface(), second.Interface()) {
				t.Fatalf("%s: decoded %+v, after a round trip %+v", subject, first.Elem(), second.Elem())
			}
			again, err := json.Marshal(second.Interface())
			if err != nil || !bytes.Equal(encoded, again) {
				t.Fatalf("%s: encodes as\n%s\nthen as\n%s (%v)", subject, encoded, again, err)
			}
		}
	})
}
