package access

import (
	"fmt"
	"slices"
	"strings"
)

// Markdown renders the permission table for docs/security.md: per
// identity, what it publishes, the durable consumers it reads, the streams
// it reads message by message, the buckets it reads and writes, and what
// it creates.
func Markdown() string {
	var b strings.Builder
	b.WriteString("| identity | publishes | durable consumers (stream: name) | reads streams | writes buckets | reads buckets | creates at start |\n")
	b.WriteString("|---|---|---|---|---|---|---|\n")
	for _, id := range Identities {
		var consumers, writes, reads []string
		for _, c := range id.Consumers {
			name := c.Durable
			if name == AnyName {
				name = "* (" + strings.Join(c.Filters, ", ") + ")"
			}
			consumers = append(consumers, c.Stream+": "+name)
		}
		for _, bk := range sortedKeys(id.Buckets) {
			name := bk
			if IsObjectStore(bk) {
				name += " (objects)"
			}
			if slices.Contains(id.Purges, bk) {
				name += " (purges old delete markers)"
			}
			switch id.Buckets[bk] {
			case Write:
				writes = append(writes, name)
			case WriteOwn:
				writes = append(writes, name+" (its own keys)")
			default:
				reads = append(reads, name)
			}
		}
		creates := append(slices.Clone(id.Streams), id.Owns...)
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s | %s | %s |\n", id.Name,
			cell(id.Publishes), cell(consumers), cell(id.Reads), cell(writes), cell(reads), cell(creates))
	}
	return b.String()
}

func cell(items []string) string {
	if len(items) == 0 {
		return "—"
	}
	out := make([]string, len(items))
	for i, s := range items {
		out[i] = "`" + s + "`"
	}
	return strings.Join(out, "<br>")
}
