package events_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// schemaDir is the contract, relative to this package's directory, where
// go test runs.
const schemaDir = "../../schemas/events"

const (
	schemaIDBase = "https://modelport.dev/schemas/events/"
	draft2020    = "https://json-schema.org/draft/2020-12/schema"
)

// subjects returns the registry's keys in a stable order.
func subjects() []string {
	keys := make([]string, 0, len(events.Registry))
	for k := range events.Registry {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// schemaFile is the raw schema, decoded only as far as the test needs.
type schemaFile struct {
	Schema               string                    `json:"$schema"`
	ID                   string                    `json:"$id"`
	Title                string                    `json:"title"`
	Description          string                    `json:"description"`
	Type                 string                    `json:"type"`
	Properties           map[string]schemaProperty `json:"properties"`
	Required             []string                  `json:"required"`
	AdditionalProperties *bool                     `json:"additionalProperties"`
}

type schemaProperty struct {
	Type        string `json:"type"`
	Format      string `json:"format"`
	Description string `json:"description"`
	// Properties and Required describe a nested object, such as
	// InstancePlacedV1's model.
	Properties map[string]schemaProperty `json:"properties"`
	Required   []string                  `json:"required"`
	// AdditionalProperties is true, or a schema for a map's values.
	AdditionalProperties json.RawMessage `json:"additionalProperties"`
}

// loadSchema reads and compiles the schema for subject, with format
// assertions on so that date-time and uuid are checked, not just noted.
func loadSchema(t *testing.T, subject string) (*jsonschema.Schema, schemaFile) {
	t.Helper()
	path := filepath.Join(schemaDir, subject+".json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read schema: %v", err)
	}
	var raw schemaFile
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatalf("decode schema %s: %v", path, err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("decode schema %s: %v", path, err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource(path, doc); err != nil {
		t.Fatalf("add schema %s: %v", path, err)
	}
	sch, err := c.Compile(path)
	if err != nil {
		t.Fatalf("compile schema %s: %v", path, err)
	}
	return sch, raw
}

// validate checks the JSON document b against sch.
func validate(sch *jsonschema.Schema, b []byte) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return err
	}
	return sch.Validate(inst)
}

// jsonField is one field of an event as encoding/json sees it.
type jsonField struct {
	name     string
	typ      reflect.Type
	required bool // no omitempty or omitzero: publishers always set it
}

// jsonFields walks typ's fields the way encoding/json does, descending into
// embedded structs such as Meta.
func jsonFields(typ reflect.Type) []jsonField {
	var fields []jsonField
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				fields = append(fields, jsonFields(ft)...)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		optional := slices.Contains(strings.Split(opts, ","), "omitempty") ||
			slices.Contains(strings.Split(opts, ","), "omitzero")
		fields = append(fields, jsonField{name: name, typ: ft, required: !optional})
	}
	return fields
}

// jsonType is the schema type and format a Go field type encodes as.
func jsonType(typ reflect.Type) (typeName, format string) {
	if typ == reflect.TypeFor[time.Time]() {
		return "string", "date-time"
	}
	switch typ.Kind() {
	case reflect.String:
		return "string", ""
	case reflect.Bool:
		return "boolean", ""
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer", ""
	case reflect.Float32, reflect.Float64:
		return "number", ""
	case reflect.Slice, reflect.Array:
		return "array", ""
	default:
		return "object", ""
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

// TestSchemaMatchesGoType fails when a field is added, removed, renamed or
// retyped on one side of the contract only.
func TestSchemaMatchesGoType(t *testing.T) {
	for _, subject := range subjects() {
		t.Run(subject, func(t *testing.T) {
			_, raw := loadSchema(t, subject)
			typ := reflect.TypeOf(events.Registry[subject])

			headers := []struct{ name, got, want string }{
				{"$schema", raw.Schema, draft2020},
				{"$id", raw.ID, schemaIDBase + subject + ".json"},
				{"title", raw.Title, typ.Name()},
				{"type", raw.Type, "object"},
			}
			for _, h := range headers {
				if h.got != h.want {
					t.Errorf("%s: got %q, want %q", h.name, h.got, h.want)
				}
			}
			if raw.Description == "" {
				t.Error("description is empty; say what the event means, who publishes and who consumes it")
			}
			if raw.AdditionalProperties == nil || !*raw.AdditionalProperties {
				t.Error("additionalProperties: got not true, want true (adding an optional field keeps the version)")
			}

			checkFields(t, "", typ, raw.Properties, raw.Required)
		})
	}
}

// checkFields compares one object's schema properties with the JSON
// fields of its Go type, and descends into nested objects (a struct, or a
// pointer to one) so that their fields cannot drift either.
func checkFields(t *testing.T, prefix string, typ reflect.Type, props map[string]schemaProperty, req []string) {
	t.Helper()
	var names, required []string
	for _, f := range jsonFields(typ) {
		names = append(names, f.name)
		if f.required {
			required = append(required, f.name)
		}
	}
	if got, want := sortedKeys(props), sorted(names); !slices.Equal(got, want) {
		t.Errorf("%sproperties: got %v, want the Go type's JSON fields %v", prefix, got, want)
	}
	if got, want := sorted(req), sorted(required); !slices.Equal(got, want) {
		t.Errorf("%srequired: got %v, want %v", prefix, got, want)
	}
	for _, f := range jsonFields(typ) {
		p, ok := props[f.name]
		if !ok {
			continue // reported above
		}
		wantType, wantFormat := jsonType(f.typ)
		if got, want := p.Type, wantType; got != want {
			t.Errorf("%s%s: type: got %q, want %q (Go %s)", prefix, f.name, got, want, f.typ)
		}
		if wantFormat != "" && p.Format != wantFormat {
			t.Errorf("%s%s: format: got %q, want %q (Go %s)", prefix, f.name, p.Format, wantFormat, f.typ)
		}
		if p.Description == "" {
			t.Errorf("%s%s: description is empty", prefix, f.name)
		}
		nested := f.typ
		if nested.Kind() == reflect.Pointer {
			nested = nested.Elem()
		}
		if nested.Kind() == reflect.Struct && nested != reflect.TypeFor[time.Time]() {
			if string(p.AdditionalProperties) != "true" {
				t.Errorf("%s%s: additionalProperties: got not true, want true", prefix, f.name)
			}
			checkFields(t, prefix+f.name+".", nested, p.Properties, p.Required)
		}
	}
}

// TestExamples validates each example, decodes it strictly into the Go
// type, encodes it again and checks that the result still validates and
// says the same thing.
func TestExamples(t *testing.T) {
	for _, subject := range subjects() {
		t.Run(subject, func(t *testing.T) {
			sch, _ := loadSchema(t, subject)
			b, err := os.ReadFile(filepath.Join(schemaDir, "testdata", subject+".json"))
			if err != nil {
				t.Fatalf("every event needs a valid example: %v", err)
			}
			if err := validate(sch, b); err != nil {
				t.Fatalf("example does not validate: %v", err)
			}

			typ := reflect.TypeOf(events.Registry[subject])
			ptr := reflect.New(typ)
			dec := json.NewDecoder(bytes.NewReader(b))
			dec.DisallowUnknownFields()
			if err := dec.Decode(ptr.Interface()); err != nil {
				t.Fatalf("decode into %s: %v", typ, err)
			}
			ev := ptr.Elem().Interface().(events.Event)
			if got, want := ev.Subject(), subject; got != want && !strings.HasPrefix(got, want+".") {
				t.Errorf("Subject(): got %q, want %q or %q + a suffix", got, want, want)
			}
			if ev.EventID() == "" {
				t.Error("EventID(): got empty")
			}

			again, err := json.Marshal(ev)
			if err != nil {
				t.Fatalf("encode %s: %v", typ, err)
			}
			if err := validate(sch, again); err != nil {
				t.Errorf("re-encoded example does not validate: %v\n%s", err, again)
			}
			var got, want any
			if err := json.Unmarshal(again, &got); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("round trip:\ngot  %s\nwant %s", again, bytes.TrimSpace(b))
			}
		})
	}
}

// TestInvalidExamples checks that each <subject>.invalid.<why>.json fails
// its schema, so the constraints are known to bite.
func TestInvalidExamples(t *testing.T) {
	for _, subject := range subjects() {
		paths, err := filepath.Glob(filepath.Join(schemaDir, "testdata", subject+".invalid.*.json"))
		if err != nil {
			t.Fatal(err)
		}
		for _, path := range paths {
			t.Run(filepath.Base(path), func(t *testing.T) {
				sch, _ := loadSchema(t, subject)
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
				if err != nil {
					t.Fatalf("an invalid example must still be JSON: %v", err)
				}
				if err := sch.Validate(inst); err == nil {
					t.Error("validation: got nil error, want one")
				}
			})
		}
	}
}

// TestNoOrphans fails on a schema or example whose subject is not in the
// registry, such as one left behind by a rename.
func TestNoOrphans(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		subject func(base string) string
	}{
		{
			name:    "schemas",
			pattern: filepath.Join(schemaDir, "*.json"),
			subject: func(base string) string { return strings.TrimSuffix(base, ".json") },
		},
		{
			name:    "examples",
			pattern: filepath.Join(schemaDir, "testdata", "*.json"),
			subject: func(base string) string {
				base = strings.TrimSuffix(base, ".json")
				if s, _, ok := strings.Cut(base, ".invalid."); ok {
					return s
				}
				return base
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			paths, err := filepath.Glob(tc.pattern)
			if err != nil {
				t.Fatal(err)
			}
			if len(paths) == 0 {
				t.Fatalf("no files match %s", tc.pattern)
			}
			for _, path := range paths {
				base := filepath.Base(path)
				if _, ok := events.Registry[tc.subject(base)]; !ok {
					t.Errorf("%s: no events.Registry entry for subject %q", base, tc.subject(base))
				}
			}
		})
	}
}

// TestFreshEventsValidate encodes events as publishers build them, which
// catches encoding problems the hand-written examples cannot, such as how
// time.Time is written.
func TestFreshEventsValidate(t *testing.T) {
	const (
		serviceID  = "0f0a3c52-9d7e-4b1a-8c36-5e2f7d9a1b40"
		instanceID = "7c9e1b24-3a5f-4d08-b6e2-1f4a8d0c5e93"
		workerID   = "gpu-node-01-7b3e90a2"
		ownerID    = "8105f7322477"
		accessName = "u-8105f7322477/test"
	)
	now := time.Now().UTC()
	tests := []struct {
		name string
		ev   events.Event
	}{
		{"ServiceCreatedV1", events.ServiceCreatedV1{
			Meta: events.NewMeta(), ServiceID: serviceID, OwnerID: ownerID, Name: "test",
			AccessName: accessName, BaseModel: "qwen2.5-0.5b-instruct-gguf", Task: "text-generation",
			Engine: "llama.cpp", Instances: 1, BillingMethod: "per-instance-hour",
		}},
		{"InstancePlacedV1", events.InstancePlacedV1{
			Meta: events.NewMeta(), InstanceID: instanceID, ServiceID: serviceID, WorkerID: workerID,
			AccessName: accessName, BaseModel: "stable-diffusion-xl", Task: "image-generation", Engine: "simulator",
		}},
		{"InstanceReadyV1", events.InstanceReadyV1{
			Meta: events.NewMeta(), InstanceID: instanceID, ServiceID: serviceID, WorkerID: workerID,
			Engine: "vllm", Endpoint: "http://127.0.0.1:41234/v1",
		}},
		{"InstanceStoppedV1", events.InstanceStoppedV1{
			Meta: events.NewMeta(), InstanceID: instanceID, ServiceID: serviceID, WorkerID: workerID,
			Reason: "engine exited: status 1",
		}},
		{"InstanceFailedV1", events.InstanceFailedV1{
			Meta: events.NewMeta(), InstanceID: instanceID, ServiceID: serviceID, WorkerID: workerID,
			Engine: "vllm", Reason: "crashed 5 times within 10m0s; last: exit status 1", ExitCode: 1, Restarts: 4,
			LogTail: "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n",
		}},
		{"ServiceScaledV1", events.ServiceScaledV1{
			Meta: events.NewMeta(), ServiceID: serviceID, OwnerID: ownerID, From: 2, To: 0,
			Reason: "autoscaler: idle for 15m0s",
		}},
		{"ServiceDeletedV1", events.ServiceDeletedV1{
			Meta: events.NewMeta(), ServiceID: serviceID, OwnerID: ownerID, Name: "test", AccessName: accessName,
		}},
		{"InstanceReleasedV1", events.InstanceReleasedV1{
			Meta: events.NewMeta(), InstanceID: instanceID, ServiceID: serviceID, WorkerID: workerID,
			Reason: "scaled down to 1",
		}},
		{"InstanceReleasedV1 worker gone", events.InstanceReleasedV1{
			Meta: events.NewMeta(), InstanceID: instanceID, ServiceID: serviceID, WorkerID: workerID,
			Reason: "worker " + workerID + " stopped beating", WorkerGone: true,
		}},
		{"ServiceAutoscaledV1", events.ServiceAutoscaledV1{
			Meta: events.NewMeta(), ServiceID: serviceID, OwnerID: ownerID, From: 0, To: 1,
			Reason: "1 request waiting for an instance", InFlight: 1, TargetInFlight: 4,
		}},
		{"PlacementFailedV1", events.PlacementFailedV1{
			Meta: events.NewMeta(), ServiceID: serviceID, OwnerID: ownerID, Wanted: 3, Placed: 1,
			Reason: "no worker has room (2 live workers, all full)",
		}},
		{"EventRejectedV1", events.EventRejectedV1{
			Meta: events.NewMeta(), Consumer: "billing-usage", Stream: "USAGE", StreamSequence: 7,
			OriginalSubject: "usage.request.completed.v1", Headers: map[string][]string{},
			Reason: "decode event: unexpected end of JSON input", Payload: "{", PayloadEncoding: "utf-8",
		}},
		{"RequestCompletedV1", events.RequestCompletedV1{
			Meta: events.NewMeta(), RequestID: "a1b2c3d4e5f60718293a4b5c6d7e8f90", ServiceID: serviceID,
			OwnerID: ownerID, AccessName: accessName, BaseModel: "qwen2-vl-7b-instruct",
			APIKeyID: "3d6f8a1c-2b4e-4c7d-9e0f-5a6b7c8d9e0f", InstanceID: instanceID,
			Endpoint: "/v1/chat/completions", Status: 200, PromptTokens: 1287, CompletionTokens: 64,
			TotalTokens: 1351, StartedAt: now.Add(-850 * time.Millisecond), FinishedAt: now,
		}},
	}

	covered := map[string]bool{}
	for _, tc := range tests {
		covered[reflect.TypeOf(tc.ev).Name()] = true
	}
	for _, subject := range subjects() {
		if name := reflect.TypeOf(events.Registry[subject]).Name(); !covered[name] {
			t.Errorf("no fresh %s in this test; add one for %s", name, subject)
		}
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var schemaName string
			for _, subject := range subjects() {
				if reflect.TypeOf(events.Registry[subject]) == reflect.TypeOf(tc.ev) {
					schemaName = subject
				}
			}
			if schemaName == "" {
				t.Fatalf("%s is not in events.Registry", tc.name)
			}
			sch, _ := loadSchema(t, schemaName)
			b, err := json.Marshal(tc.ev)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate(sch, b); err != nil {
				t.Errorf("fresh event does not validate: %v\n%s", err, b)
			}
		})
	}
}
