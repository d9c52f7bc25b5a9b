package transport

import (
	"context"

	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
	"github.com/nats-io/nats.go/jetstream"
)

// Services implements billing.Services on the services bucket.
type Services struct{ KV jetstream.KeyValue }

var _ billing.Services = Services{}

// Service implements billing.Services.
func (s Services) Service(ctx context.Context, id string) (state.Service, error) {
	svc, _, err := state.Get[state.Service](ctx, s.KV, id)
	return svc, err
}

// All returns every service in the bucket, deleted ones included.
func (s Services) All(ctx context.Context) ([]state.Service, error) {
	return state.List[state.Service](ctx, s.KV, ">")
}
