package transport

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"

	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/routing"
	"github.com/nats-io/nats.go/jetstream"
)

// WatchTable keeps table current from the services and instances buckets.
// It returns once both initial snapshots are loaded; updates keep flowing
// until ctx ends.
func WatchTable(ctx context.Context, services, instances jetstream.KeyValue, table *routing.Table, log *slog.Logger) error {
	sw, err := services.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch services: %w", err)
	}
	iw, err := instances.WatchAll(ctx)
	if err != nil {
		_ = sw.Stop()
		return fmt.Errorf("watch instances: %w", err)
	}
	applyService := func(e jetstream.KeyValueEntry) {
		if e.Operation() != jetstream.KeyValuePut {
			table.DeleteService(e.Key())
			return
		}
		var s state.Service
		if err := json.Unmarshal(e.Value(), &s); err != nil {
			log.Error("bad service record", "key", e.Key(), "err", err)
			return
		}
		table.PutService(s)
	}
	applyInstance := func(e jetstream.KeyValueEntry) {
		if e.Operation() != jetstream.KeyValuePut {
			svc, inst, _ := strings.Cut(e.Key(), ".")
			table.DeleteInstance(svc, inst)
			return
		}
		var in state.Instance
		if err := json.Unmarshal(e.Value(), &in); err != nil {
			log.Error("bad instance record", "key", e.Key(), "err", err)
			return
		}
		table.PutInstance(in)
	}
	// Initial snapshots: each watcher sends nil once it has replayed.
	for _, w := range []struct {
		w     jetstream.KeyWatcher
		apply func(jetstream.KeyValueEntry)
	}{{sw, applyService}, {iw, applyInstance}} {
		for e := range w.w.Updates() {
			if e == nil {
				break
			}
			w.apply(e)
		}
	}
	go func() {
		defer sw.Stop()
		defer iw.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-sw.Updates():
				if !ok {
					return
				}
				if e != nil {
					applyService(e)
				}
			case e, ok := <-iw.Updates():
				if !ok {
					return
				}
				if e != nil {
					applyInstance(e)
				}
			}
		}
	}()
	return nil
}
