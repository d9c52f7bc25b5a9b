package transport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/routing"
	"github.com/nats-io/nats.go/jetstream"
)

// TableWatch keeps a routing table current from the services and
// instances buckets. A watch that ends (its subscription closed) is
// started again, with backoff, from a fresh copy of both buckets; while it
// is down the table may be stale, and Ready says so.
type TableWatch struct {
	services, instances jetstream.KeyValue
	table               *routing.Table
	log                 *slog.Logger

	mu   sync.Mutex
	err  error           // why the watch is down; nil while it is live
	keys map[string]bool // the keys applied from the last copy, by bucket/key
}

// Ready returns nil while the watch is live, else why it is not.
func (w *TableWatch) Ready() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// WatchTable keeps table current from the services and instances buckets.
// It returns once both are loaded; updates keep flowing, the watch started
// again whenever it ends, until ctx ends.
func WatchTable(ctx context.Context, services, instances jetstream.KeyValue, table *routing.Table, log *slog.Logger) (*TableWatch, error) {
	w := &TableWatch{services: services, instances: instances, table: table, log: log}
	sw, iw, err := w.load(ctx)
	if err != nil {
		return nil, err
	}
	go w.run(ctx, sw, iw)
	return w, nil
}

// load starts watching both buckets and applies their contents, then
// removes from the table what an earlier copy had and this one has not
// (deleted while the watch was down).
func (w *TableWatch) load(ctx context.Context) (jetstream.KeyWatcher, jetstream.KeyWatcher, error) {
	sw, err := w.services.WatchAll(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("watch services: %w", err)
	}
	iw, err := w.instances.WatchAll(ctx)
	if err != nil {
		_ = sw.Stop()
		return nil, nil, fmt.Errorf("watch instances: %w", err)
	}
	seen := map[string]bool{}
	for _, x := range []struct {
		kw    jetstream.KeyWatcher
		apply func(jetstream.KeyValueEntry)
	}{{sw, w.applyService}, {iw, w.applyInstance}} {
		// Each watcher sends nil once it has replayed the bucket.
	replay:
		for {
			select {
			case <-ctx.Done():
				_, _ = sw.Stop(), iw.Stop()
				return nil, nil, ctx.Err()
			case e, ok := <-x.kw.Updates():
				if !ok {
					_, _ = sw.Stop(), iw.Stop()
					return nil, nil, errors.New("the watch ended while loading")
				}
				if e == nil {
					break replay
				}
				x.apply(e)
				if e.Operation() == jetstream.KeyValuePut {
					seen[e.Bucket()+"/"+e.Key()] = true
				}
			}
		}
	}
	w.mu.Lock()
	old := w.keys
	w.keys = seen
	w.mu.Unlock()
	for k := range old {
		if seen[k] {
			continue
		}
		bucket, key, _ := strings.Cut(k, "/")
		if bucket == state.BucketServices {
			w.table.DeleteService(key)
		} else {
			svc, inst, _ := strings.Cut(key, ".")
			w.table.DeleteInstance(svc, inst)
		}
	}
	return sw, iw, nil
}

func (w *TableWatch) applyService(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		w.table.DeleteService(e.Key())
		return
	}
	var s state.Service
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		w.log.Error("bad service record", "key", e.Key(), "err", err)
		return
	}
	w.table.PutService(s)
}

func (w *TableWatch) applyInstance(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		svc, inst, _ := strings.Cut(e.Key(), ".")
		w.table.DeleteInstance(svc, inst)
		return
	}
	var in state.Instance
	if err := json.Unmarshal(e.Value(), &in); err != nil {
		w.log.Error("bad instance record", "key", e.Key(), "err", err)
		return
	}
	w.table.PutInstance(in)
}

// Backoff between attempts to start a watch again.
const (
	rewatchFirst = 100 * time.Millisecond
	rewatchMax   = 5 * time.Second
)

// run applies updates until ctx ends, starting the watch again whenever
// it ends.
func (w *TableWatch) run(ctx context.Context, sw, iw jetstream.KeyWatcher) {
	for {
		w.follow(ctx, sw, iw)
		_, _ = sw.Stop(), iw.Stop()
		if ctx.Err() != nil {
			return
		}
		w.setDown(errors.New("the routing table's watch ended; starting it again"))
		w.log.ErrorContext(ctx, "routing table watch ended; starting it again: the table may be stale until it is back")
		for wait := rewatchFirst; ; wait = min(2*wait, rewatchMax) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			var err error
			if sw, iw, err = w.load(ctx); err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			w.setDown(fmt.Errorf("the routing table's watch is down: %w", err))
			w.log.ErrorContext(ctx, "routing table watch not started again; retrying", "err", err, "in", min(2*wait, rewatchMax))
		}
		w.setDown(nil)
		w.log.InfoContext(ctx, "routing table watch started again")
	}
}

// follow applies updates until a watcher ends or ctx does.
func (w *TableWatch) follow(ctx context.Context, sw, iw jetstream.KeyWatcher) {
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-sw.Updates():
			if !ok {
				return
			}
			if e != nil {
				w.applyService(e)
				w.remember(e)
			}
		case e, ok := <-iw.Updates():
			if !ok {
				return
			}
			if e != nil {
				w.applyInstance(e)
				w.remember(e)
			}
		}
	}
}

// remember tracks which keys the table holds, for the next fresh copy.
func (w *TableWatch) remember(e jetstream.KeyValueEntry) {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := e.Bucket() + "/" + e.Key()
	if e.Operation() == jetstream.KeyValuePut {
		w.keys[k] = true
	} else {
		delete(w.keys, k)
	}
}

func (w *TableWatch) setDown(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.err = err
}
