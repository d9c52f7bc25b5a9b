package access

import (
	"slices"
	"sort"
)

// Rule is an allow list and a deny list of subjects, with NATS wildcards.
// A deny wins over an allow; anything not allowed is denied.
type Rule struct {
	Allow []string
	Deny  []string
}

// Permissions are what a NATS server enforces for one identity.
type Permissions struct {
	Publish   Rule
	Subscribe Rule
}

// InboxPrefix is the prefix of an identity's reply subjects. Each identity
// has its own, and may subscribe only there, so no one reads the answers
// another gets (a key lookup, say), and no one may publish there but the
// server.
func InboxPrefix(name string) string { return "_INBOX_" + name }

const api = "$JS.API."

// NATSPermissions derives the identity's NATS permissions from the table:
//
//   - its event subjects;
//   - for every stream it touches (its own, its consumers', those it
//     follows, its buckets'), stream info; create and update for those it
//     owns;
//   - its durable consumers: create, info, next message and acks on those
//     names only;
//   - streams it reads: message gets, but no consumer, so it can neither
//     change nor drain anyone's;
//   - buckets: get, watch, and for Write put and delete; for WriteOwn
//     put and delete of the keys under its own name; purges of those
//     whose old delete markers it purges;
//   - replies on its own inbox prefix.
//
// Everything else, stream deletion and purges, other consumers' names and
// other identities' inboxes included, is refused.
func (id Identity) NATSPermissions() Permissions {
	var p Permissions
	allow := func(s ...string) { p.Publish.Allow = append(p.Publish.Allow, s...) }
	allow(id.Publishes...)
	// Account information: limits and totals, which creating a bucket
	// checks.
	allow(api + "INFO")
	for _, s := range id.StreamsUsed() {
		allow(api + "STREAM.INFO." + s)
	}
	for _, s := range id.Streams {
		allow(api+"STREAM.CREATE."+s, api+"STREAM.UPDATE."+s)
	}
	for _, c := range id.Consumers {
		allow(consumerSubjects(c)...)
		if c.Durable == AnyName {
			p.Publish.Deny = append(p.Publish.Deny, othersDurables(id.Name, c.Stream)...)
		}
	}
	for _, s := range id.Reads {
		allow(api+"STREAM.MSG.GET."+s, api+"DIRECT.GET."+s, api+"DIRECT.GET."+s+".>")
	}
	for _, b := range sortedKeys(id.Buckets) {
		st := StreamOf(b)
		allow(api+"STREAM.INFO."+st, api+"STREAM.MSG.GET."+st, api+"DIRECT.GET."+st+".>",
			// Watches and object reads: ordered push consumers, whose
			// flow control the client answers.
			api+"CONSUMER.CREATE."+st+".*", api+"CONSUMER.CREATE."+st+".*.>",
			api+"CONSUMER.INFO."+st+".*", api+"CONSUMER.DELETE."+st+".*",
			"$JS.FC."+st+".>", "$JS.FC.*.*."+st+".>")
		if id.Buckets[b] == WriteOwn {
			allow("$KV." + b + "." + id.Name + ".>")
		}
		if id.Buckets[b] == Write {
			if IsObjectStore(b) {
				// A replaced or deleted object's chunks are purged.
				allow("$O."+b+".>", api+"STREAM.PURGE."+st)
			} else {
				allow("$KV." + b + ".>")
			}
		}
	}
	for _, b := range id.Purges {
		allow(api + "STREAM.PURGE." + StreamOf(b))
	}
	for _, b := range id.Owns {
		st := StreamOf(b)
		allow(api+"STREAM.CREATE."+st, api+"STREAM.UPDATE."+st)
	}
	p.Publish.Allow = dedupe(p.Publish.Allow)
	p.Publish.Deny = dedupe(p.Publish.Deny)
	p.Subscribe.Allow = []string{InboxPrefix(id.Name) + ".>"}
	return p
}

// consumerSubjects are the API and ack subjects of one durable consumer.
// A consumer of any name may be created only with its filter, which the
// create subject then carries and the server holds the request to.
func consumerSubjects(c Consumer) []string {
	sd := c.Stream + "." + c.Durable
	var out []string
	if c.Durable == AnyName {
		for _, f := range c.Filters {
			out = append(out, api+"CONSUMER.CREATE."+sd+"."+f)
		}
	} else {
		out = append(out, api+"CONSUMER.CREATE."+sd, api+"CONSUMER.CREATE."+sd+".>")
	}
	return append(out,
		api+"CONSUMER.INFO."+sd, api+"CONSUMER.MSG.NEXT."+sd,
		"$JS.ACK."+sd+".>", "$JS.ACK.*.*."+sd+".>")
}

// othersDurables denies the durable consumers of every other identity on
// stream.
func othersDurables(self, stream string) []string {
	var out []string
	for _, other := range Identities {
		if other.Name == self {
			continue
		}
		for _, c := range other.Consumers {
			if c.Stream != stream || c.Durable == AnyName {
				continue
			}
			sd := stream + "." + c.Durable
			out = append(out,
				api+"CONSUMER.CREATE."+sd, api+"CONSUMER.CREATE."+sd+".>",
				api+"CONSUMER.INFO."+sd, api+"CONSUMER.DELETE."+sd, api+"CONSUMER.MSG.NEXT."+sd,
				"$JS.ACK."+sd+".>", "$JS.ACK.*.*."+sd+".>")
		}
	}
	return out
}

func dedupe(s []string) []string {
	var out []string
	for _, v := range s {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
