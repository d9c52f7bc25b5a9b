// Package access is Modelport's least-privilege model of the bus: one
// NATS identity per service (and one read-only identity for people who
// follow the events), and for each what it may publish, which durable
// consumers it reads, which streams it follows and which key-value buckets
// and object stores it reads or writes. Identities is the one table; the
// NATS permissions each server enforces (NATSPermissions), the buckets and
// streams each service creates at start (natsx.Open) and the table in
// docs/security.md are all derived from it.
//
// A new event type, stream, bucket or durable consumer needs a line here:
// the tests fail until every subject in events.Registry has its publisher,
// every stream and bucket its owner, and a service's own tests run under
// its identity, so a subject it uses without a grant is refused there.
package access

import (
	"fmt"
	"slices"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// Identity names.
const (
	Deployer        = "deployer"
	Scaler          = "scaler"
	Router          = "router"
	InferenceWorker = "inference-worker"
	Billing         = "billing"
	// EventsReader is the read-only identity for people who follow the
	// event streams (modelport events tail): it reads every event stream
	// and can change nothing.
	EventsReader = "events-reader"
)

// Level is how far an identity may go in a bucket.
type Level int

// Levels.
const (
	// Read is reading keys and watching the bucket.
	Read Level = iota + 1
	// Write is Read, and putting and deleting keys.
	Write
	// WriteOwn is Read, and putting and deleting the keys under the
	// identity's own name ("<identity>.…") alone: a bucket several
	// services share, each with keys of its own, such as the leases.
	WriteOwn
)

func (l Level) String() string {
	switch l {
	case Read:
		return "read"
	case Write:
		return "write"
	case WriteOwn:
		return "write own keys"
	}
	return fmt.Sprintf("Level(%d)", int(l))
}

// AnyName stands for a durable name that changes per process, such as a
// worker's, which carries the worker ID. It grants the consumer on any
// name except the durable consumers of the other identities on that
// stream, which stay denied.
const AnyName = "*"

// Consumer is a durable consumer an identity reads: the stream, the
// durable name and the subjects it filters on.
type Consumer struct {
	Stream  string
	Durable string
	Filters []string
}

// Identity is what one NATS user may do.
type Identity struct {
	Name string
	// About says in a few words what it is, for docs/security.md.
	About string
	// Publishes are the event subjects it publishes, with NATS wildcards
	// where a subject ends in a worker ID.
	Publishes []string
	// Consumers are the durable consumers it reads (and acks).
	Consumers []Consumer
	// Reads are the streams it reads message by message (stream info and
	// message gets), from where it likes, without a consumer: it cannot
	// touch any consumer, nor take messages from one.
	Reads []string
	// Streams are the event streams it creates and updates at start: it
	// owns them.
	Streams []string
	// Buckets are the key-value buckets and object stores it uses, and
	// how.
	Buckets map[string]Level
	// Owns are the buckets it creates and updates at start; it writes them.
	// A bucket has one owner, which the others wait for, except a bucket
	// each of its users writes only its own keys of (WriteOwn): each of
	// them creates it, with the same configuration, so each can start
	// alone.
	Owns []string
	// Purges are the buckets whose old delete markers it purges (a stream
	// purge of one removed key's history at a time); it writes them.
	Purges []string
}

// deadLetters are the dead-letter subjects of the given consumers.
func deadLetters(durables ...string) []string {
	out := make([]string, len(durables))
	for i, d := range durables {
		out[i] = events.DeadLetterSubject(d)
	}
	return out
}

var eventStreams = []string{events.StreamDeploy, events.StreamScale, events.StreamWorker, events.StreamUsage, events.StreamDeadLetter}

// Identities is the permission table, one entry per NATS identity.
var Identities = []Identity{
	{
		Name:  Deployer,
		About: "control API: services, names, owners, API keys",
		Publishes: []string{
			events.SubjectServiceCreatedV1, events.SubjectServiceScaledV1, events.SubjectServiceDeletedV1,
		},
		Consumers: []Consumer{
			{events.StreamWorker, "deployer-instance-ready", []string{events.SubjectInstanceReadyV1}},
			{events.StreamWorker, "deployer-instance-stopped", []string{events.SubjectInstanceStoppedV1}},
			{events.StreamWorker, "deployer-instance-failed", []string{events.SubjectInstanceFailedV1}},
			{events.StreamScale, "deployer-instance-placed", []string{events.PlacementSubject("*")}},
			{events.StreamScale, "deployer-instance-gone", []string{events.ReleaseSubject(">")}},
			{events.StreamScale, "deployer-placement-failed", []string{events.SubjectPlacementFailedV1}},
			{events.StreamScale, "deployer-service-autoscaled", []string{events.SubjectServiceAutoscaledV1}},
		},
		// A service's recent events, in the console.
		Reads:   []string{events.StreamDeploy, events.StreamScale, events.StreamWorker},
		Streams: []string{events.StreamDeploy},
		Buckets: map[string]Level{
			state.BucketServices: Write, state.BucketNames: Write, state.BucketAPIKeys: Write,
			state.BucketOwners: Write, state.BucketIdempotency: Write, state.BucketInstances: Read,
			state.BucketModels: Write, state.BucketPlacements: Read, state.BucketLeases: WriteOwn,
		},
		Owns: []string{state.BucketServices, state.BucketNames, state.BucketAPIKeys, state.BucketOwners, state.BucketIdempotency,
			state.BucketModels, state.BucketLeases},
		Purges: []string{state.BucketServices, state.BucketNames, state.BucketIdempotency},
	},
	{
		Name:  Scaler,
		About: "places instances on workers, autoscales",
		Publishes: []string{
			events.PlacementSubject("*"), events.ReleaseSubject("*"),
			events.SubjectServiceAutoscaledV1, events.SubjectPlacementFailedV1,
		},
		Consumers: []Consumer{
			{events.StreamDeploy, "scaler-service-created", []string{events.SubjectServiceCreatedV1}},
			{events.StreamDeploy, "scaler-service-scaled", []string{events.SubjectServiceScaledV1}},
			{events.StreamDeploy, "scaler-service-deleted", []string{events.SubjectServiceDeletedV1}},
			{events.StreamWorker, "scaler-instance-failed", []string{events.SubjectInstanceFailedV1}},
		},
		Streams: []string{events.StreamScale},
		// It removes the instance records of a worker that died; the
		// leading replica holds its lease.
		Buckets: map[string]Level{
			state.BucketPlacements: Write, state.BucketInstances: Write,
			state.BucketServices: Read, state.BucketWorkers: Read, state.BucketLoad: Read, state.BucketAPIKeys: Read,
			state.BucketLeases: WriteOwn,
		},
		Owns:   []string{state.BucketPlacements, state.BucketLeases},
		Purges: []string{state.BucketPlacements, state.BucketInstances},
	},
	{
		Name:  InferenceWorker,
		About: "runs engine processes, which run third-party model code",
		Publishes: []string{
			events.SubjectInstanceReadyV1, events.SubjectInstanceStoppedV1, events.SubjectInstanceFailedV1,
		},
		// Durable names carry the worker ID (inference-worker-<id> and
		// inference-worker-release-<id>), so they cannot be listed: any
		// name is allowed with these filters, except the other
		// identities' durable consumers.
		Consumers: []Consumer{
			{events.StreamScale, AnyName, []string{events.PlacementSubject("*")}},
			{events.StreamScale, AnyName, []string{events.ReleaseSubject("*")}},
		},
		Streams: []string{events.StreamWorker},
		Buckets: map[string]Level{
			state.BucketInstances: Write, state.BucketWorkers: Write,
			state.BucketPlacements: Read, state.BucketAPIKeys: Read,
		},
		Owns: []string{state.BucketInstances, state.BucketWorkers},
	},
	{
		Name:      Router,
		About:     "OpenAI API: routes requests, meters usage",
		Publishes: []string{events.SubjectRequestCompletedV1},
		Streams:   []string{events.StreamUsage},
		Buckets: map[string]Level{
			state.BucketLoad: Write, state.BucketImages: Write,
			state.BucketServices: Read, state.BucketInstances: Read, state.BucketAPIKeys: Read,
		},
		Owns: []string{state.BucketLoad, state.BucketImages},
	},
	{
		Name:      Billing,
		About:     "stores usage and instance time in ClickHouse; usage API",
		Publishes: deadLetters("billing-usage", "billing-instances", "billing-releases", "billing-services", "billing-failures"),
		Consumers: []Consumer{
			{events.StreamUsage, "billing-usage", []string{events.SubjectRequestCompletedV1}},
			{events.StreamWorker, "billing-instances", []string{events.SubjectInstanceReadyV1, events.SubjectInstanceStoppedV1}},
			{events.StreamScale, "billing-releases", []string{events.ReleaseSubject(">")}},
			{events.StreamDeploy, "billing-services", []string{events.SubjectServiceCreatedV1, events.SubjectServiceDeletedV1}},
			{events.StreamWorker, "billing-failures", []string{events.SubjectInstanceFailedV1}},
		},
		// The dead-letter report.
		Reads:   []string{events.StreamDeadLetter},
		Streams: []string{events.StreamDeadLetter},
		// Workers' heartbeats are the evidence that an instance still runs;
		// leases keep migrations, price changes, closings and jobs to one
		// billing process at a time.
		Buckets: map[string]Level{state.BucketServices: Read, state.BucketAPIKeys: Read, state.BucketWorkers: Read, state.BucketLeases: WriteOwn},
		Owns:    []string{state.BucketLeases},
	},
	{
		Name:  EventsReader,
		About: "people following the events (modelport events tail): reads every event stream, changes nothing",
		Reads: eventStreams,
	},
}

// ObjectStores are the buckets in Identities that are object stores, not
// key-value buckets.
var ObjectStores = func() []string {
	var out []string
	for _, cfg := range state.ObjectStores {
		out = append(out, cfg.Bucket)
	}
	return out
}()

// For returns the identity with the given name.
func For(name string) (Identity, bool) {
	i := slices.IndexFunc(Identities, func(id Identity) bool { return id.Name == name })
	if i < 0 {
		return Identity{}, false
	}
	return Identities[i], true
}

// Names returns the identity names in table order.
func Names() []string {
	out := make([]string, len(Identities))
	for i, id := range Identities {
		out[i] = id.Name
	}
	return out
}

// StreamsUsed returns every stream the identity touches: its own, those of
// its consumers, and those it reads, without buckets' streams.
func (id Identity) StreamsUsed() []string {
	var out []string
	add := func(s string) {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, s := range id.Streams {
		add(s)
	}
	for _, c := range id.Consumers {
		add(c.Stream)
	}
	for _, s := range id.Reads {
		add(s)
	}
	return out
}

// IsObjectStore reports whether a bucket is an object store.
func IsObjectStore(bucket string) bool { return slices.Contains(ObjectStores, bucket) }

// StreamOf returns the name of the JetStream stream behind a bucket.
func StreamOf(bucket string) string {
	if IsObjectStore(bucket) {
		return "OBJ_" + bucket
	}
	return "KV_" + bucket
}

// StreamOwner returns the identity that creates an event stream, or "" if
// none does.
func StreamOwner(stream string) string {
	for _, id := range Identities {
		if slices.Contains(id.Streams, stream) {
			return id.Name
		}
	}
	return ""
}

// BucketOwner returns the identity that creates a bucket (the first, for
// a bucket its users share), or "" if none does.
func BucketOwner(bucket string) string {
	for _, id := range Identities {
		if slices.Contains(id.Owns, bucket) {
			return id.Name
		}
	}
	return ""
}
