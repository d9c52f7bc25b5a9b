// Package billing is the billing service's domain: recording metered usage
// and instance lifecycles, and answering what a service has used and what
// it costs. It knows nothing of NATS or ClickHouse.
package billing

import (
	"context"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// UsageWriter stores usage events. Storing an event ID again must not
// count it twice. Implemented by internal/clickhouse.
type UsageWriter interface {
	// InsertUsage stores events delivered for the first time.
	InsertUsage(ctx context.Context, batch []events.RequestCompletedV1) error
	// InsertRedeliveredUsage stores events delivered before, which an
	// earlier attempt may have stored already; it may cost a lookup.
	InsertRedeliveredUsage(ctx context.Context, batch []events.RequestCompletedV1) error
}

// LifecycleWriter stores instance and service lifecycle events, each event
// ID once however often it is stored. Implemented by internal/clickhouse.
type LifecycleWriter interface {
	InsertInstanceEvents(ctx context.Context, batch []InstanceEvent) error
	InsertServiceEvents(ctx context.Context, batch []ServiceEvent) error
}

// Reader answers what services used, counting each event ID once.
// Implemented by internal/clickhouse.
type Reader interface {
	// TokenUsage returns token usage with q.From <= occurred_at < q.To,
	// leaving out usage after the second of its service's deletion, grouped
	// as q.By asks. Each line (service, UTC hour, API key, base model) is
	// priced with q.Rates at its hour and rounded (TokenCostMicros) before
	// it is summed into a row.
	TokenUsage(ctx context.Context, q TokenQuery) ([]TokenRow, error)
	// Lifecycle returns what a service's instance time in [from, to)
	// depends on: the instance events in the window, ordered by time and
	// then event ID, preceded for each instance that was running at from
	// by a ready event at from (and for one gone before from, by a gone
	// event at from), each with an empty event ID; and the service's
	// deletion time (zero when none is recorded).
	Lifecycle(ctx context.Context, serviceID string, from, to time.Time) (Lifecycle, error)
}

// PriceStore keeps the price schedule: entries are only ever added, each
// batch of them as the next revision. Implemented by internal/clickhouse.
type PriceStore interface {
	// PriceSchedule returns the schedule at its latest revision, or an
	// empty one (revision 0, no entries) before any is stored.
	PriceSchedule(ctx context.Context) (*Schedule, error)
	// AddPrices stores entries as revision. Storing the same entries
	// again under the same revision changes nothing.
	AddPrices(ctx context.Context, revision uint64, entries []PriceEntry) error
}

// Store is everything billing keeps.
type Store interface {
	UsageWriter
	LifecycleWriter
	Reader
	PriceStore
	PeriodStore
	InstanceStore
}

// Locks runs work that must not run in two billing processes at once:
// Hold runs fn while holding the lease called name, waiting for it while
// another process holds it. fn's context ends if the lease is lost.
// Implemented on a NATS key-value bucket by internal/transport.
type Locks interface {
	Hold(ctx context.Context, name string, fn func(ctx context.Context) error) error
}

// TokenQuery asks for token usage; see Reader.TokenUsage.
type TokenQuery struct {
	// ServiceID narrows the query to one service; empty is every service.
	ServiceID string
	From, To  time.Time
	By        Grouping
	Rates     Rates
}

// Grouping says how TokenUsage breaks usage down. The zero Grouping is
// one row of totals.
type Grouping struct {
	// Period is time.Hour or 24*time.Hour for a row per UTC hour or day,
	// or 0.
	Period    time.Duration
	Service   bool
	APIKey    bool
	BaseModel bool
}

// TokenRow is one group of token usage. The fields not grouped by are
// zero. CostMicros is what the usage costs at the query's rates.
type TokenRow struct {
	ServiceID        string
	APIKeyID         string
	BaseModel        string
	PeriodStart      time.Time
	Requests         uint64
	PromptTokens     uint64
	CompletionTokens uint64
	CostMicros       uint64
}

// Services looks services up, to check who may read their usage and how
// they are billed.
type Services interface {
	Service(ctx context.Context, id string) (state.Service, error)
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
	// InstanceFailed is the worker giving up on an instance
	// (worker.instance.failed.v1): it ends the instance's time, whether or
	// not the stop that should follow arrives.
	InstanceFailed InstanceKind = "failed"
	// InstanceLost is billing ending an instance's time itself: no event
	// and no worker heartbeat showed it running for longer than the
	// instance lease, so it ends at the last evidence it ran.
	InstanceLost InstanceKind = "lost"
)

// ends reports whether an event of kind k ends an instance's time.
func (k InstanceKind) ends() bool {
	return k == InstanceStopped || k == InstanceGone || k == InstanceFailed || k == InstanceLost
}

// InstanceEvent is an instance becoming ready, stopping, failing, going
// with its worker or being found lost, as billing stores it.
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

// InstanceFromFailed returns the InstanceEvent of ev.
func InstanceFromFailed(ev events.InstanceFailedV1) InstanceEvent {
	return InstanceEvent{EventID: ev.ID, Kind: InstanceFailed, InstanceID: ev.InstanceID, ServiceID: ev.ServiceID, WorkerID: ev.WorkerID, Reason: ev.Reason, At: ev.OccurredAt}
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

// isLowerUUID reports whether s is a lower-case UUID, the form every ID
// in the event contract takes:
// ^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$. It is
// written out rather than a regexp since every usage event is checked.
func isLowerUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := range len(s) {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// Check rejects a usage event that breaks its contract
// (schemas/events/usage.request.completed.v1.json) in a way that matters
// to billing: it could never be stored or counted correctly. The error is
// Invalid.
func Check(ev events.RequestCompletedV1) error {
	switch {
	case ev.ID == "":
		return errs.E(errs.Invalid, "usage event without event_id")
	case !isLowerUUID(ev.ID):
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
	case !isLowerUUID(ev.EventID):
		return errs.E(errs.Invalid, "instance event_id %q is not a lower-case UUID", ev.EventID)
	case ev.Kind != InstanceReady && !ev.Kind.ends():
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
	case !isLowerUUID(ev.EventID):
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
	locks    Locks
	now      func() time.Time

	seenMu   sync.Mutex
	lastSeen map[string]time.Time // by instance ID; see Reconcile
}

// Option configures a Service.
type Option func(*Service)

// WithClock makes the Service read the time from now, for instance-time
// that is still accruing. Tests use it to simulate time.
func WithClock(now func() time.Time) Option { return func(s *Service) { s.now = now } }

// WithLocks makes the Service take its leases from locks, so that
// several billing processes never change prices or close a period at
// once. Without it, leases are held within the process only.
func WithLocks(l Locks) Option { return func(s *Service) { s.locks = l } }

// New returns a Service on store that looks services up in services.
func New(store Store, services Services, opts ...Option) *Service {
	s := &Service{store: store, services: services, locks: &localLocks{}, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Now returns the Service's clock reading, in UTC to the second.
func (s *Service) Now() time.Time { return s.now().UTC().Truncate(time.Second) }

// Record stores a batch of checked usage events delivered for the first
// time.
func (s *Service) Record(ctx context.Context, batch []events.RequestCompletedV1) error {
	return s.store.InsertUsage(ctx, batch)
}

// RecordRedelivered stores a batch of checked usage events delivered
// before, some of which may be stored already.
func (s *Service) RecordRedelivered(ctx context.Context, batch []events.RequestCompletedV1) error {
	return s.store.InsertRedeliveredUsage(ctx, batch)
}

// RecordInstances stores a batch of checked instance events.
func (s *Service) RecordInstances(ctx context.Context, batch []InstanceEvent) error {
	return s.store.InsertInstanceEvents(ctx, batch)
}

// RecordServices stores a batch of checked service events.
func (s *Service) RecordServices(ctx context.Context, batch []ServiceEvent) error {
	return s.store.InsertServiceEvents(ctx, batch)
}
