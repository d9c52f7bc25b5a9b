package events_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite docs/events.md from the schemas")

// docFile is the generated event reference, relative to this package.
const docFile = "../../docs/events.md"

// TestEventsDoc renders docs/events.md from the schemas and their examples
// and fails when the committed file differs, so the reference cannot drift
// from the contract.
func TestEventsDoc(t *testing.T) {
	got, err := renderEventsDoc(schemaDir)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(docFile, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(docFile)
	if err != nil {
		t.Fatalf("read %s: %v; run go test ./libs/events -run TestEventsDoc -update", docFile, err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("docs/events.md is out of date with schemas/events; run go test ./libs/events -run TestEventsDoc -update")
	}
}

// docSchema is the part of a schema the reference shows.
type docSchema struct {
	Title       string              `json:"title"`
	Description string              `json:"description"`
	Properties  map[string]docField `json:"properties"`
	Required    []string            `json:"required"`
}

type docField struct {
	Type        string      `json:"type"`
	Format      string      `json:"format"`
	Pattern     string      `json:"pattern"`
	Enum        []string    `json:"enum"`
	Minimum     json.Number `json:"minimum"`
	Maximum     json.Number `json:"maximum"`
	MinLength   json.Number `json:"minLength"`
	MaxLength   json.Number `json:"maxLength"`
	Description string      `json:"description"`
	// Properties and Required describe a nested object.
	Properties map[string]docField `json:"properties"`
	Required   []string            `json:"required"`
}

// constraints lists a field's checks in a fixed order.
func (f docField) constraints() string {
	var c []string
	if f.Format != "" {
		c = append(c, "format `"+f.Format+"`")
	}
	if f.Pattern != "" {
		c = append(c, "pattern `"+f.Pattern+"`")
	}
	if len(f.Enum) > 0 {
		c = append(c, "one of `"+strings.Join(f.Enum, "`, `")+"`")
	}
	if f.Minimum != "" {
		c = append(c, "minimum "+f.Minimum.String())
	}
	if f.Maximum != "" {
		c = append(c, "maximum "+f.Maximum.String())
	}
	if f.MinLength != "" {
		c = append(c, "min length "+f.MinLength.String())
	}
	if f.MaxLength != "" {
		c = append(c, "max length "+f.MaxLength.String())
	}
	return strings.Join(c, "; ")
}

// cellEscaper keeps prose in a Markdown table cell: no column breaks, no
// placeholders such as <owner id> read as HTML.
var cellEscaper = strings.NewReplacer("|", `\|`, "\n", " ", "<", "&lt;", ">", "&gt;")

const docIntro = `# Events

<!-- Generated from schemas/events by TestEventsDoc in libs/events; do not edit.
     Regenerate with: go test ./libs/events -run TestEventsDoc -update -->

Modelport's services talk to each other through events on NATS JetStream.
Each event has a JSON Schema in ` + "`schemas/events/`" + `, which is the contract, and a
Go type in ` + "`libs/events`" + `. This page lists them all, for teams that want to
follow what the platform does.

## Subjects and streams

Subjects read ` + "`<domain>.<entity>.<past-verb>.v<N>`" + `, for example
` + "`deploy.service.created.v1`" + `. Adding an optional field or an enum value keeps the
version; any other change is a new version, published beside the old one until consumers
move. Each domain has one stream:

| Stream | Subjects | Holds |
|---|---|---|
| ` + "`DEPLOY`" + ` | ` + "`deploy.>`" + ` | the service lifecycle, from the deployer |
| ` + "`SCALE`" + ` | ` + "`scale.>`" + ` | placements, from the scaler |
| ` + "`WORKER`" + ` | ` + "`worker.>`" + ` | instance reports, from the inference-workers |
| ` + "`USAGE`" + ` | ` + "`usage.>`" + ` | completed requests, for billing |
| ` + "`DEADLETTER`" + ` | ` + "`deadletter.>`" + ` | events consumers rejected as invalid, with the reason ([billing](billing.md)) |

Placements are addressed to one worker: they go out on
` + "`scale.instance.placed.v1.<worker>`" + ` and ` + "`scale.instance.released.v1.<worker>`" + `,
where ` + "`<worker>`" + ` is the event's ` + "`worker_id`" + `. Subscribe to
` + "`scale.instance.placed.v1.*`" + ` to see every worker's.

## Headers

- ` + "`Nats-Msg-Id`" + ` is the event's ` + "`event_id`" + ` (a UUIDv7). JetStream drops a
  second message with the same ID within the stream's duplicate window, and
  consumers and ClickHouse dedupe on it too, so a publisher may retry freely.
- ` + "`traceparent`" + ` carries the W3C trace context. NATS headers are case-sensitive
  and it is always lower-case.

## Following events

With the ` + "`nats`" + ` CLI, watch events as they happen:

` + "```sh" + `
nats sub 'deploy.>'
nats sub 'scale.instance.placed.v1.*'
` + "```" + `

To replay what already happened, make a JetStream consumer that starts from a
point in the past (here an hour ago) and read from it:

` + "```sh" + `
nats consumer add DEPLOY replay-deploy --pull --deliver 1h --ack none --defaults
nats consumer next DEPLOY replay-deploy --count 100
nats consumer rm DEPLOY replay-deploy --force
` + "```" + `
`

// renderEventsDoc renders the reference from every schema in dir, sorted by
// subject, each with its example from dir/testdata.
func renderEventsDoc(dir string) ([]byte, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	slices.Sort(paths)
	var b bytes.Buffer
	b.WriteString(docIntro)
	schemas := make([]docSchema, len(paths))
	b.WriteString("\n## Events\n\n")
	for i, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(raw, &schemas[i]); err != nil {
			return nil, fmt.Errorf("decode %s: %w", p, err)
		}
		subject := strings.TrimSuffix(filepath.Base(p), ".json")
		fmt.Fprintf(&b, "- [`%s`](#%s): `%s`\n", subject, strings.ToLower(schemas[i].Title), schemas[i].Title)
	}
	for i, p := range paths {
		if err := renderEvent(&b, dir, p, schemas[i]); err != nil {
			return nil, err
		}
	}
	return b.Bytes(), nil
}

// renderEvent writes one event's section: title, description, fields in
// the schema's order, and the example.
func renderEvent(b *bytes.Buffer, dir, path string, s docSchema) error {
	subject := strings.TrimSuffix(filepath.Base(path), ".json")
	fmt.Fprintf(b, "\n### %s\n\n", s.Title)
	fmt.Fprintf(b, "Subject `%s`, Go type `events.%s`.\n\n%s\n\n", subject, s.Title, s.Description)
	b.WriteString("| Field | Type | Required | Description | Constraints |\n|---|---|---|---|---|\n")
	if err := renderFields(b, path, "", s.Properties, s.Required); err != nil {
		return err
	}
	example, err := os.ReadFile(filepath.Join(dir, "testdata", subject+".json"))
	if err != nil {
		return fmt.Errorf("example for %s: %w", subject, err)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, bytes.TrimSpace(example), "", "  "); err != nil {
		return fmt.Errorf("example for %s: %w", subject, err)
	}
	fmt.Fprintf(b, "\nExample:\n\n```json\n%s\n```\n", pretty.String())
	return nil
}

// renderFields writes one table row per field, in the schema's order
// (required lists them so; any optional ones follow, sorted), and the
// fields of a nested object after it as "<field>.<nested>", required
// where the object is present.
func renderFields(b *bytes.Buffer, path, prefix string, props map[string]docField, required []string) error {
	names := slices.Clone(required)
	var optional []string
	for name := range props {
		if !slices.Contains(names, name) {
			optional = append(optional, name)
		}
	}
	slices.Sort(optional)
	names = append(names, optional...)
	for _, name := range names {
		f, ok := props[name]
		if !ok {
			return fmt.Errorf("%s: required field %s%s has no property", path, prefix, name)
		}
		req := "no"
		if slices.Contains(required, name) {
			req = "yes"
		}
		fmt.Fprintf(b, "| `%s%s` | %s | %s | %s | %s |\n", prefix, name, f.Type, req, cellEscaper.Replace(f.Description), strings.ReplaceAll(f.constraints(), "|", `\|`))
		if len(f.Properties) > 0 {
			if err := renderFields(b, path, prefix+name+".", f.Properties, f.Required); err != nil {
				return err
			}
		}
	}
	return nil
}
