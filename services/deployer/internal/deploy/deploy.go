// Package deploy is the deployer's domain: creating model services,
// validating them against the catalog, and keeping their ready counts and
// status in step with the instances that workers report.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/models"
)

// MaxInstances bounds one service's instance count.
const MaxInstances = 64

// Store persists services. Implemented by internal/kvstore.
type Store interface {
	// Create stores a new service; a name its owner already uses is errs.Conflict.
	Create(ctx context.Context, s state.Service) error
	// Get returns a service and its revision, or errs.NotFound.
	Get(ctx context.Context, id string) (state.Service, uint64, error)
	// Update replaces a service if its revision is still rev, else errs.Conflict.
	Update(ctx context.Context, s state.Service, rev uint64) error
	// List returns every service.
	List(ctx context.Context) ([]state.Service, error)
	// Instances returns the instances workers report for a service.
	Instances(ctx context.Context, serviceID string) ([]state.Instance, error)
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
	// RoutingPolicy is how the router chooses an instance per request;
	// empty: DefaultRouting for the task.
	RoutingPolicy string `json:"routing_policy,omitempty"`
}

// Models finds the base models a caller may deploy: its own, the public
// ones and the operator's catalog; another owner's are errs.NotFound.
// Implemented by *models.Registry.
type Models interface {
	Get(ctx context.Context, caller auth.Key, name string) (models.Model, error)
}

// catalogOnly is Models over the operator's catalog alone.
type catalogOnly struct{ cat *catalog.Catalog }

func (c catalogOnly) Get(_ context.Context, _ auth.Key, name string) (models.Model, error) {
	if m, ok := c.cat.Lookup(name); ok {
		return models.FromCatalog(m), nil
	}
	return models.Model{}, errs.E(errs.NotFound, "model %q not found", name)
}

// Option configures a Manager.
type Option func(*Manager)

// WithModels has services deploy the models r resolves, registered ones
// included, instead of the catalog's alone.
func WithModels(r Models) Option { return func(m *Manager) { m.models = r } }

// Manager creates and reads services. It is safe for concurrent use.
type Manager struct {
	store   Store
	catalog *catalog.Catalog
	models  Models
	pub     Publisher
	now     func() time.Time

	// lifecycle serializes owners' scale and delete requests from store to
	// publish, so this process announces them in the order they were
	// stored: each ServiceScaledV1's From is the previous one's To.
	lifecycle sync.Mutex
}

// NewManager returns a Manager deploying the catalog's models, and with
// WithModels registered ones too.
func NewManager(store Store, cat *catalog.Catalog, pub Publisher, opts ...Option) *Manager {
	m := &Manager{store: store, catalog: cat, models: catalogOnly{cat}, pub: pub, now: func() time.Time { return time.Now().UTC() }}
	for _, o := range opts {
		o(m)
	}
	return m
}

// Catalog returns the operator's catalog.
func (m *Manager) Catalog() []catalog.Model { return m.catalog.Models() }

// namePattern is the rule for service names and owner handles, the same
// as for model names.
var namePattern = models.NamePattern

// Validate checks a request against the base model the caller asks for
// and fills defaults: one instance, per-token billing, the model's only
// task when it has one, and the task's routing policy. It returns the
// model.
func (m *Manager) Validate(ctx context.Context, caller auth.Key, req *CreateRequest) (models.Model, error) {
	if !namePattern.MatchString(req.Name) {
		return models.Model{}, errs.InvalidParam("name", "name must be 1-63 lowercase letters, digits or hyphens, starting and ending with a letter or digit")
	}
	if req.BaseModel == "" {
		return models.Model{}, errs.InvalidParam("base_model", "base_model is required; GET /api/v1/models lists the models")
	}
	model, err := m.models.Get(ctx, caller, req.BaseModel)
	if errs.KindOf(err) == errs.NotFound {
		return models.Model{}, errs.InvalidParam("base_model", "unknown base model %q; GET /api/v1/models lists them", req.BaseModel)
	}
	if err != nil {
		return models.Model{}, err
	}
	if err := validate(req, model); err != nil {
		return models.Model{}, err
	}
	return model, nil
}

// validate checks and completes what the request asks of model.
func validate(req *CreateRequest, model models.Model) error {
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
	if req.RoutingPolicy == "" {
		req.RoutingPolicy = DefaultRouting(req.Task)
	}
	return ValidateRouting(req.RoutingPolicy, "routing_policy")
}

// Create validates req, stores the service with status pending, and
// publishes ServiceCreatedV1. If the publish fails the service still
// exists; the scaler also reconciles from the services bucket.
func (m *Manager) Create(ctx context.Context, caller auth.Key, req CreateRequest) (state.Service, error) {
	if err := changes(caller); err != nil {
		return state.Service{}, err
	}
	model, err := m.Validate(ctx, caller, &req)
	if err != nil {
		return state.Service{}, err
	}
	now := m.now()
	spec := model.Spec()
	s := state.Service{
		ID:            uuid.NewString(),
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
		Model:         &spec,
		RoutingPolicy: req.RoutingPolicy,
	}
	if err := m.store.Create(ctx, s); err != nil {
		return state.Service{}, err
	}
	ev := events.ServiceCreatedV1{
		Meta: events.NewMeta(), ServiceID: s.ID, OwnerID: s.OwnerID, Name: s.Name, AccessName: s.AccessName,
		BaseModel: s.BaseModel, Task: s.Task, Engine: s.Engine, Instances: s.Instances, BillingMethod: s.BillingMethod,
	}
	if err := m.pub.Publish(ctx, ev); err != nil {
		return s, fmt.Errorf("service %s stored, announce it: %w", s.ID, err)
	}
	return s, nil
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
	return s, nil
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
// one per event, makes it safe to call for a redelivered event. A deleting
// service with no instance left becomes deleted and frees its name; a
// deleting or deleted service never comes back to life.
func (m *Manager) RefreshReady(ctx context.Context, serviceID string) error {
	return m.refresh(ctx, serviceID, "")
}

// InstanceGone recounts a service whose instance the scaler released
// because its worker stopped beating. A dead worker announces no stop, and
// the scaler removes the instance's record only after the announcement,
// so the recount leaves that instance out: without it, a service scaled
// to zero meanwhile would stay "scaling" with a ready instance that no
// longer exists. An ordinary release is recounted when its worker stops
// the instance.
func (m *Manager) InstanceGone(ctx context.Context, ev events.InstanceReleasedV1) error {
	if !ev.WorkerGone {
		return nil
	}
	return m.refresh(ctx, ev.ServiceID, ev.InstanceID)
}

// refresh is RefreshReady, leaving out the instance gone, if any.
func (m *Manager) refresh(ctx context.Context, serviceID, gone string) error {
	for attempt := 0; attempt < 10; attempt++ {
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
		insts = slices.DeleteFunc(insts, func(in state.Instance) bool { return gone != "" && in.ID == gone })
		ready, engine := 0, s.Engine
		for _, in := range insts {
			if in.Status == state.InstanceReady {
				ready++
				engine = in.Engine
			}
		}
		status := settle(s.Status, s.Instances, ready)
		if s.Status == state.StatusDeleting && len(insts) == 0 {
			status, ready = state.StatusDeleted, 0
		}
		reason := s.StatusReason
		if status == state.StatusRunning {
			reason = ""
		}
		if s.ReadyInstances == ready && s.Status == status && s.Engine == engine && s.StatusReason == reason {
			return nil
		}
		s.ReadyInstances, s.Status, s.Engine, s.StatusReason, s.UpdatedAt = ready, status, engine, reason, m.now()
		err = m.store.Update(ctx, s, rev)
		if errs.KindOf(err) == errs.Conflict {
			continue
		}
		if err != nil {
			return err
		}
		if status == state.StatusDeleted {
			return m.store.ReleaseName(ctx, s)
		}
		return nil
	}
	return errors.New("refresh ready instances: too many concurrent updates")
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
