// Package billing is the billing service's domain: recording metered usage
// and instance lifecycles, and answering what a service has used and what
// it costs. It knows nothing of NATS or ClickHouse.
package billing

import (
	"context"
	"regexp"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// UsageWriter stores usage events. Storing an event ID again must not
// count it twice. Implemented by internal/clickhouse.
type UsageWriter interface {
	InsertUsage(ctx context.Context, batch []events.RequestCompletedV1) error
}

// LifecycleWriter stores instance and service lifecycle events, each event
// ID once however often it is stored. Implemented by internal/clickhouse.
type LifecycleWriter interface {
	InsertInstanceEvents(ctx context.Context, batch []InstanceEvent) error
	InsertServiceEvents(ctx context.Context, batch []ServiceEvent) error
}

// Reader answers what a service used, counting each event ID once.
// Implemented by internal/clickhouse.
type Reader interface {
	// UsageLines returns the service's usage with from <= occurred_at < to,
	// one Line per UTC hour, API key and base model.
	UsageLines(ctx context.Context, serviceID string, from, to time.Time) ([]Line, error)
	// Lifecycle returns the service's instance events that occurred before
	// to, ordered by time and then event ID, and its deletion time (zero
	// when no deletion is recorded).
	Lifecycle(ctx context.Context, serviceID string, to time.Time) (Lifecycle, error)
}

// Store is everything billing keeps.
type Store interface {
	UsageWriter
	LifecycleWriter
	Reader
}

// Services looks services up, to check who may read their usage and how
// they are billed.
type Services interface {
	Service(ctx context.Context, id string) (state.Service, error)
}

// Line is a service's token usage in one UTC hour through one API key and
// base model: the unit a token cost is rounded in.
type Line struct {
	Hour             time.Time
	APIKeyID         string
	BaseModel        string
	Requests         uint64
	PromptTokens     uint64
	CompletionTokens uint64
}

// InstanceKind says what happened to an instance.
type InstanceKind string

// Instance event kinds.
const (
	InstanceReady   InstanceKind = "ready"
	InstanceStopped InstanceKind = "stopped"
	// InstanceGone is the scaler's release of an instance whose worker
	// stopped beating: the instance ended with its worker, which announces
	// no stop. It ends the instance's time for good.
	InstanceGone InstanceKind = "gone"
)

// InstanceEvent is an instance becoming ready, stopping or going with its
// worker, as billing stores it.
type InstanceEvent struct {
	EventID    string
	Kind       InstanceKind
	InstanceID string
	ServiceID  string
	WorkerID   string
	Reason     string
	At         time.Time
}

// InstanceFromReady returns the InstanceEvent of ev.
func InstanceFromReady(ev events.InstanceReadyV1) InstanceEvent {
	return InstanceEvent{EventID: ev.ID, Kind: InstanceReady, InstanceID: ev.InstanceID, ServiceID: ev.ServiceID, WorkerID: ev.WorkerID, At: ev.OccurredAt}
}

// InstanceFromStopped returns the InstanceEvent of ev.
func InstanceFromStopped(ev events.InstanceStoppedV1) InstanceEvent {
	return InstanceEvent{EventID: ev.ID, Kind: InstanceStopped, InstanceID: ev.InstanceID, ServiceID: ev.ServiceID, WorkerID: ev.WorkerID, Reason: ev.Reason, At: ev.OccurredAt}
}

// InstanceFromReleased returns the InstanceGone event of a release whose
// worker is gone, and false for any other release: a live worker drains
// the instance and announces its stop, which ends its time then.
func InstanceFromReleased(ev events.InstanceReleasedV1) (InstanceEvent, bool) {
	if !ev.WorkerGone {
		return InstanceEvent{}, false
	}
	return InstanceEvent{EventID: ev.ID, Kind: InstanceGone, InstanceID: ev.InstanceID, ServiceID: ev.ServiceID, WorkerID: ev.WorkerID, Reason: ev.Reason, At: ev.OccurredAt}, true
}

// ServiceKind says what happened to a service.
type ServiceKind string

// Service event kinds.
const (
	ServiceCreated ServiceKind = "created"
	ServiceDeleted ServiceKind = "deleted"
)

// ServiceEvent is a service's creation or deletion, as billing stores it.
// A deletion carries only the IDs, the name and the time.
type ServiceEvent struct {
	EventID       string
	Kind          ServiceKind
	ServiceID     string
	OwnerID       string
	Name          string
	AccessName    string
	BaseModel     string
	Task          string
	BillingMethod string
	At            time.Time
}

// ServiceFromCreated returns the ServiceEvent of ev.
func ServiceFromCreated(ev events.ServiceCreatedV1) ServiceEvent {
	return ServiceEvent{EventID: ev.ID, Kind: ServiceCreated, ServiceID: ev.ServiceID, OwnerID: ev.OwnerID, Name: ev.Name,
		AccessName: ev.AccessName, BaseModel: ev.BaseModel, Task: ev.Task, BillingMethod: ev.BillingMethod, At: ev.OccurredAt}
}

// ServiceFromDeleted returns the ServiceEvent of ev.
func ServiceFromDeleted(ev events.ServiceDeletedV1) ServiceEvent {
	return ServiceEvent{EventID: ev.ID, Kind: ServiceDeleted, ServiceID: ev.ServiceID, OwnerID: ev.OwnerID, Name: ev.Name,
		AccessName: ev.AccessName, At: ev.OccurredAt}
}

// Lifecycle is what a service's instance-time depends on.
type Lifecycle struct {
	Instances []InstanceEvent
	DeletedAt time.Time
}

// uuidPattern matches a lower-case UUID, the form every ID in the event
// contract takes.
var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// Check rejects a usage event that breaks its contract
// (schemas/events/usage.request.completed.v1.json) in a way that matters
// to billing: it could never be stored or counted correctly. The error is
// Invalid.
func Check(ev events.RequestCompletedV1) error {
	switch {
	case ev.ID == "":
		return errs.E(errs.Invalid, "usage event without event_id")
	case !uuidPattern.MatchString(ev.ID):
		return errs.E(errs.Invalid, "usage event_id %q is not a lower-case UUID", ev.ID)
	case ev.ServiceID == "":
		return errs.E(errs.Invalid, "usage event %s without service_id", ev.ID)
	case !storable(ev.OccurredAt):
		return errs.E(errs.Invalid, "usage event %s: occurred_at %s is missing or outside 1970-2105", ev.ID, ev.OccurredAt.Format(time.RFC3339))
	case ev.Status < 100 || ev.Status > 599:
		return errs.E(errs.Invalid, "usage event %s: status %d is not an HTTP status", ev.ID, ev.Status)
	case ev.PromptTokens < 0 || ev.CompletionTokens < 0 || ev.TotalTokens < 0:
		return errs.E(errs.Invalid, "usage event %s has negative token counts", ev.ID)
	case ev.PromptTokens > maxTokens || ev.CompletionTokens > maxTokens:
		return errs.E(errs.Invalid, "usage event %s: token counts over %d", ev.ID, maxTokens)
	case ev.TotalTokens != ev.PromptTokens+ev.CompletionTokens:
		return errs.E(errs.Invalid, "usage event %s: total_tokens %d is not prompt %d + completion %d", ev.ID, ev.TotalTokens, ev.PromptTokens, ev.CompletionTokens)
	}
	return nil
}

// storable reports whether ClickHouse's DateTime holds t: seconds since
// 1970 in 32 unsigned bits, so up to 2106. Anything else would wrap into
// another hour and escape the duplicate check on its event ID.
func storable(t time.Time) bool {
	return !t.Before(time.Unix(0, 0)) && t.Before(time.Date(2106, 1, 1, 0, 0, 0, 0, time.UTC))
}

// maxTokens bounds one request's token counts: ClickHouse stores them as
// UInt32, and total_tokens must fit too.
const maxTokens = 1<<31 - 1

// CheckInstanceEvent rejects an instance event billing cannot use.
func CheckInstanceEvent(ev InstanceEvent) error {
	switch {
	case !uuidPattern.MatchString(ev.EventID):
		return errs.E(errs.Invalid, "instance event_id %q is not a lower-case UUID", ev.EventID)
	case ev.Kind != InstanceReady && ev.Kind != InstanceStopped && ev.Kind != InstanceGone:
		return errs.E(errs.Invalid, "instance event %s: unknown kind %q", ev.EventID, ev.Kind)
	case ev.InstanceID == "" || ev.ServiceID == "":
		return errs.E(errs.Invalid, "instance event %s without instance_id or service_id", ev.EventID)
	case !storable(ev.At):
		return errs.E(errs.Invalid, "instance event %s: occurred_at %s is missing or outside 1970-2105", ev.EventID, ev.At.Format(time.RFC3339))
	}
	return nil
}

// CheckServiceEvent rejects a service event billing cannot use.
func CheckServiceEvent(ev ServiceEvent) error {
	switch {
	case !uuidPattern.MatchString(ev.EventID):
		return errs.E(errs.Invalid, "service event_id %q is not a lower-case UUID", ev.EventID)
	case ev.Kind != ServiceCreated && ev.Kind != ServiceDeleted:
		return errs.E(errs.Invalid, "service event %s: unknown kind %q", ev.EventID, ev.Kind)
	case ev.ServiceID == "":
		return errs.E(errs.Invalid, "service event %s without service_id", ev.EventID)
	case !storable(ev.At):
		return errs.E(errs.Invalid, "service event %s: occurred_at %s is missing or outside 1970-2105", ev.EventID, ev.At.Format(time.RFC3339))
	case ev.Kind == ServiceCreated && ev.BillingMethod != state.BillingPerToken && ev.BillingMethod != state.BillingPerInstanceHour:
		return errs.E(errs.Invalid, "service event %s: unknown billing_method %q", ev.EventID, ev.BillingMethod)
	}
	return nil
}

// Service records and reports usage. It is safe for concurrent use.
type Service struct {
	store    Store
	services Services
	prices   *Prices
	now      func() time.Time
}

// Option configures a Service.
type Option func(*Service)

// WithClock makes the Service read the time from now, for instance-time
// that is still accruing. Tests use it to simulate time.
func WithClock(now func() time.Time) Option { return func(s *Service) { s.now = now } }

// New returns a Service that bills with prices.
func New(store Store, services Services, prices *Prices, opts ...Option) *Service {
	s := &Service{store: store, services: services, prices: prices, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Prices returns the price list the Service bills with.
func (s *Service) Prices() *Prices { return s.prices }

// Record stores a batch of checked usage events.
func (s *Service) Record(ctx context.Context, batch []events.RequestCompletedV1) error {
	return s.store.InsertUsage(ctx, batch)
}

// RecordInstances stores a batch of checked instance events.
func (s *Service) RecordInstances(ctx context.Context, batch []InstanceEvent) error {
	return s.store.InsertInstanceEvents(ctx, batch)
}

// RecordServices stores a batch of checked service events.
func (s *Service) RecordServices(ctx context.Context, batch []ServiceEvent) error {
	return s.store.InsertServiceEvents(ctx, batch)
}
