// Package deploy is the deployer's domain: creating model services,
// validating them against the catalog, and keeping their ready counts and
// status in step with the instances that workers report.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// MaxInstances bounds one service's instance count.
const MaxInstances = 64

// Store persists services. Implemented by internal/kvstore.
type Store interface {
	// Create stores a new service; a name its owner already uses is
	// errs.Conflict. Creating a service stored already (a retry with the
	// same ID) is no error.
	Create(ctx context.Context, s state.Service) error
	// Get returns a service and its revision, or errs.NotFound.
	Get(ctx context.Context, id string) (state.Service, uint64, error)
	// Update replaces a service if its revision is still rev, else errs.Conflict.
	Update(ctx context.Context, s state.Service, rev uint64) error
	// Remove deletes a service's record if its revision is still rev.
	Remove(ctx context.Context, s state.Service, rev uint64) error
	// List returns every service.
	List(ctx context.Context) ([]state.Service, error)
	// Instances returns the instances workers report for a service.
	Instances(ctx context.Context, serviceID string) ([]state.Instance, error)
	// Placements returns the scaler's placements of a service.
	Placements(ctx context.Context, serviceID string) ([]state.Placement, error)
	// AllInstances and AllPlacements return every instance record and
	// every placement, for the sweep.
	AllInstances(ctx context.Context) ([]state.Instance, error)
	AllPlacements(ctx context.Context) ([]state.Placement, error)
	// ReleaseName frees a deleted service's name for reuse. It is a no-op
	// when the name is free or already claimed by another service.
	ReleaseName(ctx context.Context, s state.Service) error
}

// Publisher publishes events.
type Publisher interface {
	Publish(ctx context.Context, ev events.Event) error
}

// CreateRequest is what a user asks for.
type CreateRequest struct {
	Name          string `json:"name"`
	BaseModel     string `json:"base_model"`
	Task          string `json:"task"`
	Instances     int    `json:"instances"`
	BillingMethod string `json:"billing_method"`
	// Autoscale, when set, lets the scaler size the service; Instances
	// is then the starting count, within the policy's bounds.
	Autoscale *state.Autoscale `json:"autoscale,omitempty"`
}

// Manager creates and reads services. It is safe for concurrent use, by
// any number of deployer replicas at once: every change is a
// compare-and-set on the service's revision, and stores the event that
// announces it in the same write (see announce), so changes to one
// service are announced in the order they were stored (each
// ServiceScaledV1's From is the previous one's To) and none is lost.
type Manager struct {
	store   Store
	catalog *catalog.Catalog
	pub     Publisher
	now     func() time.Time
	// retention is how long a deleted service's record stays.
	retention time.Duration
}

// ManagerOption configures a Manager.
type ManagerOption func(*Manager)

// WithClock has the manager read the time from now; tests move it.
func WithClock(now func() time.Time) ManagerOption { return func(m *Manager) { m.now = now } }

// WithRetention sets how long a deleted service's record stays before the
// sweep removes it; default state.DeletedRetention.
func WithRetention(d time.Duration) ManagerOption { return func(m *Manager) { m.retention = d } }

// NewManager returns a Manager.
func NewManager(store Store, cat *catalog.Catalog, pub Publisher, opts ...ManagerOption) *Manager {
	m := &Manager{store: store, catalog: cat, pub: pub, now: func() time.Time { return time.Now().UTC() }, retention: state.DeletedRetention}
	for _, o := range opts {
		o(m)
	}
	return m
}

// Catalog returns the deployable models.
func (m *Manager) Catalog() []catalog.Model { return m.catalog.Models() }

var namePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Validate checks a request against the catalog and fills defaults: one
// instance, per-token billing, and the model's only task when it has one.
func (m *Manager) Validate(req *CreateRequest) error {
	if !namePattern.MatchString(req.Name) {
		return errs.InvalidParam("name", "name must be 1-63 lowercase letters, digits or hyphens, starting and ending with a letter or digit")
	}
	model, ok := m.catalog.Lookup(req.BaseModel)
	if !ok {
		return errs.InvalidParam("base_model", "unknown base model %q; GET /api/v1/catalog lists them", req.BaseModel)
	}
	if req.Task == "" && len(model.Tasks) == 1 {
		req.Task = model.Tasks[0]
	}
	switch req.Task {
	case state.TaskTextGeneration, state.TaskImageUnderstanding, state.TaskImageGeneration:
	default:
		return errs.InvalidParam("task", "task must be one of text-generation, image-understanding, image-generation")
	}
	if !model.Supports(req.Task) {
		return errs.InvalidParam("task", "base model %s does not support %s (it supports %v)", model.Name, req.Task, model.Tasks)
	}
	if req.Autoscale != nil {
		if err := ValidateAutoscale(req.Autoscale); err != nil {
			return err
		}
		if req.Instances == 0 {
			req.Instances = max(req.Autoscale.MinInstances, 1)
		}
		if req.Instances < req.Autoscale.MinInstances || req.Instances > req.Autoscale.MaxInstances {
			return errs.InvalidParam("instances", "instances must be within the autoscale policy's %d to %d",
				req.Autoscale.MinInstances, req.Autoscale.MaxInstances)
		}
	}
	if req.Instances == 0 {
		req.Instances = 1
	}
	if req.Instances < 1 || req.Instances > MaxInstances {
		return errs.InvalidParam("instances", "instances must be between 1 and %d", MaxInstances)
	}
	if req.BillingMethod == "" {
		req.BillingMethod = state.BillingPerToken
	}
	if req.BillingMethod != state.BillingPerToken && req.BillingMethod != state.BillingPerInstanceHour {
		return errs.InvalidParam("billing_method", "billing_method must be per-token or per-instance-hour")
	}
	return nil
}

// Create validates req, stores the service with status pending, and
// publishes ServiceCreatedV1. If the publish fails the service still
// exists and the error says so; the event stays in the service's outbox
// and is published later (the scaler reconciles from the services bucket
// meanwhile).
func (m *Manager) Create(ctx context.Context, caller auth.Key, req CreateRequest) (state.Service, error) {
	return m.create(ctx, caller, req, uuid.NewString())
}

// create is Create with the service ID chosen by the caller, so a retry
// of a create that may have been stored uses the same ID.
func (m *Manager) create(ctx context.Context, caller auth.Key, req CreateRequest, id string) (state.Service, error) {
	if err := changes(caller); err != nil {
		return state.Service{}, err
	}
	if err := m.Validate(&req); err != nil {
		return state.Service{}, err
	}
	model, _ := m.catalog.Lookup(req.BaseModel)
	now := m.now()
	s := state.Service{
		ID:            id,
		OwnerID:       caller.OwnerID,
		Name:          req.Name,
		AccessName:    AccessName(caller.OwnerID, req.Name),
		BaseModel:     model.Name,
		Task:          req.Task,
		Engine:        model.Engine,
		Instances:     req.Instances,
		Status:        state.StatusPending,
		StatusReason:  PendingReason,
		BillingMethod: req.BillingMethod,
		CreatedAt:     now,
		UpdatedAt:     now,
		Autoscale:     req.Autoscale,
	}
	ev := events.ServiceCreatedV1{
		Meta: events.NewMeta(), ServiceID: s.ID, OwnerID: s.OwnerID, Name: s.Name, AccessName: s.AccessName,
		BaseModel: s.BaseModel, Task: s.Task, Engine: s.Engine, Instances: s.Instances, BillingMethod: s.BillingMethod,
	}
	if err := stage(&s, ev); err != nil {
		return state.Service{}, err
	}
	if err := m.store.Create(ctx, s); err != nil {
		return state.Service{}, err
	}
	if err := m.announce(ctx, s.ID); err != nil {
		return public(s), fmt.Errorf("service %s stored, announce it: %w", s.ID, err)
	}
	return public(s), nil
}

// changes refuses keys restricted to some services: they may call and
// read those services, not create or change any.
func changes(caller auth.Key) error {
	if caller.Restricted() {
		return errs.E(errs.Forbidden, "a key restricted to some services cannot create or change services")
	}
	return nil
}

// AccessName is the name clients send as "model": u-<owner>/<name>.
func AccessName(ownerID, name string) string { return "u-" + ownerID + "/" + name }

// Get returns a service the caller may see. Another owner's service is
// NotFound, so names do not leak.
func (m *Manager) Get(ctx context.Context, caller auth.Key, id string) (state.Service, error) {
	s, _, err := m.store.Get(ctx, id)
	if err != nil {
		return state.Service{}, err
	}
	if !caller.Reaches(s.OwnerID, s.ID) {
		return state.Service{}, errs.E(errs.NotFound, "service %s not found", id)
	}
	return public(s), nil
}

// Instances returns a service's instances. Only admins see them: they
// expose internal endpoints.
func (m *Manager) Instances(ctx context.Context, caller auth.Key, id string) ([]state.Instance, error) {
	if !caller.Admin {
		return nil, errs.E(errs.Forbidden, "only admins can list instances")
	}
	if _, err := m.Get(ctx, caller, id); err != nil {
		return nil, err
	}
	return m.store.Instances(ctx, id)
}

// RefreshReady recounts a service's ready instances from the instances
// bucket and updates its status and engine. Recounting, rather than adding
// one per event, makes it safe to call for a redelivered event, and at any
// time. A deleting service with no instance record and no placement left
// becomes deleted and frees its name; a deleting or deleted service never
// comes back to life.
func (m *Manager) RefreshReady(ctx context.Context, serviceID string) error {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		pause(ctx, attempt)
		s, rev, err := m.store.Get(ctx, serviceID)
		if errs.KindOf(err) == errs.NotFound {
			return nil // removed meanwhile: nothing to count
		}
		if err != nil {
			return err
		}
		if s.Status == state.StatusDeleted {
			// Done already; freeing the name again covers a release that
			// failed after the status was stored.
			return m.store.ReleaseName(ctx, s)
		}
		insts, err := m.store.Instances(ctx, serviceID)
		if err != nil {
			return err
		}
		var ps []state.Placement
		if s.Status == state.StatusDeleting {
			if ps, err = m.store.Placements(ctx, serviceID); err != nil {
				return err
			}
		}
		c := recount(s, insts, ps)
		if !c.changes(s) {
			return nil
		}
		s.ReadyInstances, s.Status, s.Engine, s.StatusReason, s.UpdatedAt = c.ready, c.status, c.engine, c.reason, m.now()
		err = m.store.Update(ctx, s, rev)
		if errs.KindOf(err) == errs.Conflict {
			continue
		}
		if err != nil {
			return err
		}
		if c.status == state.StatusDeleted {
			return m.store.ReleaseName(ctx, s)
		}
		return nil
	}
	return errors.New("refresh ready instances: too many concurrent updates")
}

// count is a service's ready count, status, engine and reason as its
// instance and placement records make them.
type count struct {
	ready          int
	status, engine string
	reason         string
}

// recount computes s's count from its instance records and, when it is
// deleting, its placements.
func recount(s state.Service, insts []state.Instance, ps []state.Placement) count {
	c := count{engine: s.Engine, reason: s.StatusReason}
	for _, in := range insts {
		if in.Status == state.InstanceReady {
			c.ready++
			c.engine = in.Engine
		}
	}
	c.status = settle(s.Status, s.Instances, c.ready)
	if s.Status == state.StatusDeleting && len(insts) == 0 && len(ps) == 0 {
		c.status, c.ready = state.StatusDeleted, 0
	}
	if c.status == state.StatusRunning {
		c.reason = ""
	}
	return c
}

// changes reports whether storing c would change s.
func (c count) changes(s state.Service) bool {
	return s.ReadyInstances != c.ready || s.Status != c.status || s.Engine != c.engine || s.StatusReason != c.reason
}

// settle returns a service's status once ready of its desired instances
// are ready. A deploying (or failed) service runs once it has at least
// the desired count; a scaling one once it has exactly that count, so a
// scale-down stays scaling until the extra instances are gone. Desired
// zero with nothing left is idle. Deleting and deleted are left alone.
func settle(status string, desired, ready int) string {
	switch {
	case status == state.StatusDeleting || status == state.StatusDeleted:
		return status
	case desired == 0 && ready == 0:
		return state.StatusIdle
	case desired == 0:
		return state.StatusScaling
	case status == state.StatusScaling || status == state.StatusIdle:
		if ready == desired {
			return state.StatusRunning
		}
		return state.StatusScaling
	case ready >= desired:
		return state.StatusRunning
	case status == state.StatusFailed && ready > 0:
		// Serving again (an instance came back): the scaler places the rest.
		return state.StatusScaling
	case status == state.StatusRunning, status == state.StatusPending && ready > 0:
		return state.StatusDeploying
	}
	return status
}
