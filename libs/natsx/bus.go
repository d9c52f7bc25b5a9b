package natsx

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Bus is a service's connection to NATS with the event streams and the
// state buckets ensured.
type Bus struct {
	Conn      *nats.Conn
	JS        jetstream.JetStream
	Publisher *Publisher
	// Replicas is how many copies JetStream keeps of each stream and bucket.
	Replicas int
	buckets  map[string]jetstream.KeyValue
}

// Open connects to url and ensures every stream and bucket exists with the
// given number of replicas, so any service can start first.
func Open(ctx context.Context, url, name string, replicas int, log *slog.Logger) (*Bus, error) {
	nc, js, err := Connect(url, name, log)
	if err != nil {
		return nil, err
	}
	if err := events.EnsureStreams(ctx, js, replicas); err != nil {
		nc.Close()
		return nil, err
	}
	kvs, err := state.EnsureBuckets(ctx, js, replicas)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &Bus{Conn: nc, JS: js, Publisher: NewPublisher(js), Replicas: max(replicas, 1), buckets: kvs}, nil
}

// KV returns a state bucket by name; it panics on a name not in state.Buckets.
func (b *Bus) KV(name string) jetstream.KeyValue {
	kv, ok := b.buckets[name]
	if !ok {
		panic(fmt.Sprintf("natsx: unknown bucket %q", name))
	}
	return kv
}

// Close drains the connection: in-flight handlers finish, then it closes.
func (b *Bus) Close() {
	_ = b.Conn.Drain()
}
