package transport

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/routing"
	"github.com/nats-io/nats.go/jetstream"
)

// ReportLoad writes this router's demand per service to the load bucket
// every interval, and at once when a request starts waiting for an
// instance, so a service scaled to zero starts again without delay. It
// returns when ctx ends.
func ReportLoad(ctx context.Context, kv jetstream.KeyValue, routerID string, demand *routing.Demand, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-demand.Waiting():
		}
		for _, s := range demand.Snapshot() {
			rec := state.Load{
				ServiceID: s.ServiceID, RouterID: routerID, InFlight: s.InFlight, Waiting: s.Waiting,
				Requests: s.Requests, LastRequestAt: s.LastRequestAt, ReportedAt: time.Now().UTC(),
			}
			b, err := json.Marshal(rec)
			if err != nil {
				continue
			}
			if _, err := kv.Put(ctx, state.LoadKey(s.ServiceID, routerID), b); err != nil && ctx.Err() == nil {
				demand.Touch(s.ServiceID) // report it again at the next tick
				log.WarnContext(ctx, "load report not written; the autoscaler sees older demand", "service_id", s.ServiceID, "err", err)
			}
		}
	}
}
