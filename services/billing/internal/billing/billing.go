// Package billing is the billing service's domain: recording metered usage
// and answering what a service has used.
package billing

import (
	"context"
	"strings"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// Store persists usage and sums it, counting each event ID once however
// often it was stored. Implemented by internal/clickhouse.
type Store interface {
	InsertUsage(ctx context.Context, batch []events.RequestCompletedV1) error
	Totals(ctx context.Context, serviceID string) (Totals, error)
}

// Services looks services up, to check who may read their usage.
type Services interface {
	Service(ctx context.Context, id string) (state.Service, error)
}

// Totals is a service's usage.
type Totals struct {
	ServiceID        string `json:"service_id"`
	Requests         uint64 `json:"requests"`
	PromptTokens     uint64 `json:"prompt_tokens"`
	CompletionTokens uint64 `json:"completion_tokens"`
	TotalTokens      uint64 `json:"total_tokens"`
}

// Service records and reports usage. It is safe for concurrent use.
type Service struct {
	store    Store
	services Services
}

// New returns a Service.
func New(store Store, services Services) *Service {
	return &Service{store: store, services: services}
}

// Check rejects an event that can never be stored correctly.
func Check(ev events.RequestCompletedV1) error {
	switch {
	case ev.ID == "":
		return errs.E(errs.Invalid, "usage event without event_id")
	case ev.ServiceID == "":
		return errs.E(errs.Invalid, "usage event %s without service_id", ev.ID)
	case ev.PromptTokens < 0 || ev.CompletionTokens < 0 || ev.TotalTokens < 0:
		return errs.E(errs.Invalid, "usage event %s has negative token counts", ev.ID)
	case ev.TotalTokens != ev.PromptTokens+ev.CompletionTokens:
		return errs.E(errs.Invalid, "usage event %s: total_tokens %d is not prompt %d + completion %d", ev.ID, ev.TotalTokens, ev.PromptTokens, ev.CompletionTokens)
	}
	return nil
}

// Record stores a batch of checked events.
func (s *Service) Record(ctx context.Context, batch []events.RequestCompletedV1) error {
	return s.store.InsertUsage(ctx, batch)
}

// Totals returns the usage of a service the caller owns (admins: any).
// Another owner's service is NotFound, so IDs do not leak.
func (s *Service) Totals(ctx context.Context, caller auth.Key, serviceID string) (Totals, error) {
	if serviceID == "" {
		return Totals{}, errs.InvalidParam("service_id", "service_id is required")
	}
	if strings.ContainsAny(serviceID, ".*> ") {
		return Totals{}, errs.E(errs.NotFound, "service %q not found", serviceID)
	}
	svc, err := s.services.Service(ctx, serviceID)
	if err != nil {
		return Totals{}, err
	}
	if !caller.Admin && svc.OwnerID != caller.OwnerID {
		return Totals{}, errs.E(errs.NotFound, "service %s not found", serviceID)
	}
	return s.store.Totals(ctx, serviceID)
}
