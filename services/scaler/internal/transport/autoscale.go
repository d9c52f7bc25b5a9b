package transport

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/scaler/internal/autoscale"
	"github.com/nats-io/nats.go/jetstream"
)

// Autoscale runs the autoscaler every interval, and at once when a router
// reports a request waiting for an instance, as when a service scaled to
// zero is called. It returns when ctx ends.
func Autoscale(ctx context.Context, a *autoscale.Autoscaler, loads jetstream.KeyValue, every time.Duration, log *slog.Logger) {
	waiting := make(chan struct{}, 1)
	go watchWaiting(ctx, loads, waiting, log)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-waiting:
		}
		if err := a.Tick(ctx); err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "autoscaling tick", "err", err)
		}
	}
}

// watchWaiting signals waiting for each load report with waiting requests,
// restarting the watch if it ends early.
func watchWaiting(ctx context.Context, loads jetstream.KeyValue, waiting chan<- struct{}, log *slog.Logger) {
	for ctx.Err() == nil {
		w, err := loads.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
		if err != nil {
			log.WarnContext(ctx, "watch load reports", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			var l state.Load
			if json.Unmarshal(e.Value(), &l) == nil && l.Waiting > 0 {
				select {
				case waiting <- struct{}{}:
				default:
				}
			}
		}
		_ = w.Stop()
	}
}
