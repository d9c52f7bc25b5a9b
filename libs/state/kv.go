package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/nats-io/nats.go/jetstream"
)

// Get reads the JSON record under key and its revision. A missing key is an
// errs.NotFound error.
func Get[T any](ctx context.Context, kv jetstream.KeyValue, key string) (T, uint64, error) {
	var v T
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return v, 0, errs.E(errs.NotFound, "%s %s not found", kv.Bucket(), key)
	}
	if err != nil {
		return v, 0, errs.Wrap(errs.Unavailable, err, "read %s %s", kv.Bucket(), key)
	}
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		return v, 0, fmt.Errorf("decode %s %s: %w", kv.Bucket(), key, err)
	}
	return v, e.Revision(), nil
}

// Put writes v as JSON under key.
func Put(ctx context.Context, kv jetstream.KeyValue, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s %s: %w", kv.Bucket(), key, err)
	}
	if _, err := kv.Put(ctx, key, b); err != nil {
		return errs.Wrap(errs.Unavailable, err, "write %s %s", kv.Bucket(), key)
	}
	return nil
}

// List returns every record whose key matches the pattern (NATS wildcards:
// "svc.*", ">"), skipping deleted keys.
func List[T any](ctx context.Context, kv jetstream.KeyValue, pattern string) ([]T, error) {
	w, err := kv.Watch(ctx, pattern, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "list %s %s", kv.Bucket(), pattern)
	}
	defer w.Stop()
	var out []T
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return out, nil
			}
			if e == nil { // the initial values are all delivered
				return out, nil
			}
			var v T
			if err := json.Unmarshal(e.Value(), &v); err != nil {
				return nil, fmt.Errorf("decode %s %s: %w", kv.Bucket(), e.Key(), err)
			}
			out = append(out, v)
		}
	}
}

// PurgeMarkers removes the delete markers in kv older than olderThan, and
// the history of keys deleted since, so removed records stop taking room
// and stop being sent to every new watcher.
func PurgeMarkers(ctx context.Context, kv jetstream.KeyValue, olderThan time.Duration) error {
	if err := kv.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(olderThan)); err != nil {
		return errs.Wrap(errs.Unavailable, err, "purge delete markers of %s", kv.Bucket())
	}
	return nil
}
