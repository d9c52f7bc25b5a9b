package natsx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Bus is a service's connection to NATS with its streams and buckets
// ensured or bound.
type Bus struct {
	Conn      *nats.Conn
	JS        jetstream.JetStream
	Publisher *Publisher
	// Replicas is how many copies JetStream keeps of each stream and bucket.
	Replicas int
	// Identity is the access-table identity the bus connected as; empty
	// for a name the table does not know.
	Identity string
	buckets  map[string]jetstream.KeyValue
}

// Open connects to url as identity name and sets up what the identity
// uses (access.Identities): it creates or updates, with the given number
// of replicas, the streams and buckets it owns, and binds the others it
// uses, waiting until their owners have created them, so services can
// start in any order. A name the table does not know (a tool, a test's
// admin) sets up every stream and bucket, which needs an identity allowed
// everything.
func Open(ctx context.Context, url, name string, replicas int, log *slog.Logger, opts ...Option) (*Bus, error) {
	nc, js, err := Connect(url, name, log, opts...)
	if err != nil {
		return nil, err
	}
	b := &Bus{Conn: nc, JS: js, Publisher: NewPublisher(js), Replicas: max(replicas, 1), buckets: map[string]jetstream.KeyValue{}}
	// A refused request gets no answer: end the set-up at the refusal.
	gctx, done := Guard(ctx, nc)
	err = b.setUp(gctx, name, log)
	done()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if id, known := access.For(name); known {
		logged := nc.Opts.ReconnectedCB
		nc.SetReconnectHandler(func(c *nats.Conn) {
			if logged != nil {
				logged(c)
			}
			go b.restore(id, log)
		})
	}
	return b, nil
}

// restore creates again, after a reconnection, the buckets the identity
// owns that keep their data in memory: a NATS server that restarted has
// lost them (a single server, or every replica), and those waiting for
// them at start (the scaler for the router's load reports) would wait
// for good, while the owner's writes to them failed.
func (b *Bus) restore(id access.Identity, log *slog.Logger) {
	for _, cfg := range state.Buckets {
		if cfg.Storage != jetstream.MemoryStorage || !slices.Contains(id.Owns, cfg.Bucket) {
			continue
		}
		cfg.Replicas = b.Replicas
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := retry(ctx, log, "restore bucket "+cfg.Bucket, func(ctx context.Context) error {
			_, err := b.JS.CreateOrUpdateKeyValue(ctx, cfg)
			return err
		})
		cancel()
		if err != nil {
			log.Warn("restore bucket after reconnecting", "bucket", cfg.Bucket, "err", err)
		}
	}
}

func (b *Bus) setUp(ctx context.Context, name string, log *slog.Logger) error {
	id, known := access.For(name)
	if !known {
		if err := events.EnsureStreams(ctx, b.JS, b.Replicas); err != nil {
			return Explain(b.Conn, time.Time{}, err)
		}
		kvs, err := state.EnsureBuckets(ctx, b.JS, b.Replicas)
		if err != nil {
			return Explain(b.Conn, time.Time{}, err)
		}
		b.buckets = kvs
		return nil
	}
	b.Identity = name
	for _, cfg := range events.Streams {
		if !slices.Contains(id.Streams, cfg.Name) {
			continue
		}
		cfg.Replicas = b.Replicas
		start := time.Now()
		if err := retry(ctx, log, "ensure stream "+cfg.Name, func(ctx context.Context) error {
			_, err := b.JS.CreateOrUpdateStream(ctx, cfg)
			return err
		}); err != nil {
			return Explain(b.Conn, start, err)
		}
	}
	for _, s := range id.StreamsUsed() {
		if slices.Contains(id.Streams, s) {
			continue
		}
		if err := await(ctx, log, "stream "+s, access.StreamOwner(s), func(ctx context.Context) error {
			_, err := b.JS.Stream(ctx, s)
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				return errMissing
			}
			return err
		}); err != nil {
			return Explain(b.Conn, time.Time{}, err)
		}
	}
	for _, cfg := range state.Buckets {
		if _, used := id.Buckets[cfg.Bucket]; !used {
			continue
		}
		if slices.Contains(id.Owns, cfg.Bucket) {
			cfg.Replicas = b.Replicas
			start := time.Now()
			if err := retry(ctx, log, "ensure bucket "+cfg.Bucket, func(ctx context.Context) error {
				kv, err := b.JS.CreateOrUpdateKeyValue(ctx, cfg)
				b.buckets[cfg.Bucket] = kv
				return err
			}); err != nil {
				return Explain(b.Conn, start, err)
			}
			continue
		}
		err := await(ctx, log, "bucket "+cfg.Bucket, access.BucketOwner(cfg.Bucket), func(ctx context.Context) error {
			kv, err := b.JS.KeyValue(ctx, cfg.Bucket)
			if errors.Is(err, jetstream.ErrBucketNotFound) {
				return errMissing
			}
			b.buckets[cfg.Bucket] = kv
			return err
		})
		if err != nil {
			return Explain(b.Conn, time.Time{}, err)
		}
	}
	for _, cfg := range state.ObjectStores {
		if _, used := id.Buckets[cfg.Bucket]; !used {
			continue
		}
		if slices.Contains(id.Owns, cfg.Bucket) {
			cfg.Replicas = b.Replicas
			start := time.Now()
			if err := retry(ctx, log, "ensure object store "+cfg.Bucket, func(ctx context.Context) error {
				_, err := b.JS.CreateOrUpdateObjectStore(ctx, cfg)
				return err
			}); err != nil {
				return Explain(b.Conn, start, err)
			}
			continue
		}
		if err := await(ctx, log, "object store "+cfg.Bucket, access.BucketOwner(cfg.Bucket), func(ctx context.Context) error {
			_, err := b.JS.ObjectStore(ctx, cfg.Bucket)
			if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
				return errMissing
			}
			return err
		}); err != nil {
			return Explain(b.Conn, time.Time{}, err)
		}
	}
	return nil
}

var errMissing = errors.New("not created yet")

// await calls bind until what exists, saying once in the log whom it
// waits for.
func await(ctx context.Context, log *slog.Logger, what, owner string, bind func(context.Context) error) error {
	start := time.Now()
	waiting := false
	return retry(ctx, log, "bind "+what, func(ctx context.Context) error {
		err := bind(ctx)
		switch {
		case errors.Is(err, errMissing):
			if !waiting {
				log.Info("waiting for "+what+", which "+owner+" creates at start", "what", what, "owner", owner)
				waiting = true
			}
			return errRetry
		case err == nil && waiting:
			log.Info("found "+what, "after", time.Since(start).Round(time.Millisecond))
		}
		return err
	})
}

// errRetry asks retry to try again without a warning.
var errRetry = errors.New("again")

// retry calls f until it succeeds, returns an error that is not
// transient, or ctx ends. A JetStream cluster still electing its leaders,
// or busy creating what several services asked for at once, times out or
// answers 503: that is worth waiting for.
func retry(ctx context.Context, log *slog.Logger, what string, f func(context.Context) error) error {
	for attempt := uint64(1); ; attempt++ {
		err := f(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w (%w)", what, err, context.Cause(ctx))
		}
		if !errors.Is(err, errRetry) {
			if !transient(err) {
				return fmt.Errorf("%s: %w", what, err)
			}
			log.Warn(what+": JetStream not ready, trying again", "err", err, "attempt", attempt)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, context.Cause(ctx))
		case <-time.After(min(Backoff(attempt), 2*time.Second)):
		}
	}
}

// transient reports whether a JetStream API error may go away by itself.
func transient(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code >= 500
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrJetStreamNotEnabled)
}

// KV returns a state bucket by name. It panics on a bucket the bus's
// identity has no grant for, or one not in state.Buckets: that is a
// missing line in the access table, found by the first test that runs
// the code.
func (b *Bus) KV(name string) jetstream.KeyValue {
	kv, ok := b.buckets[name]
	if !ok {
		panic(fmt.Sprintf("natsx: bucket %q is not granted to identity %q: add it to access.Identities", name, b.Identity))
	}
	return kv
}

// Close drains the connection: in-flight handlers finish, then it closes.
func (b *Bus) Close() {
	_ = b.Conn.Drain()
}
