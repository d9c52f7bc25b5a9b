package models

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

// Store keeps registered models by owner and name. Implemented by
// internal/kvstore.
type Store interface {
	// Create stores a new model; a name its owner already uses is errs.Conflict.
	Create(ctx context.Context, m Model) error
	// Get returns one owner's model, or errs.NotFound.
	Get(ctx context.Context, owner, name string) (Model, error)
	// List returns one owner's models (OwnerPublic: everyone's).
	List(ctx context.Context, owner string) ([]Model, error)
	// All returns every registered model.
	All(ctx context.Context) ([]Model, error)
	// Delete removes one owner's model; a missing one is no error.
	Delete(ctx context.Context, owner, name string) error
}

// Inspector reads model files on the model store. Implemented by
// internal/modelstore. Its errors are errs.Invalid where the path or the
// files are at fault: outside the model store, missing, not a model.
type Inspector interface {
	// Inspect reads the model at path, a GGUF file or a folder with
	// config.json and safetensors, and estimates what an instance needs at
	// the context length that contextLength picks from the trained one.
	Inspect(ctx context.Context, path string, contextLength func(trained int) int) (Inspection, error)
	// InspectAdapter reads a LoRA adapter at path: a GGUF adapter, or a
	// folder with adapter_config.json and safetensors.
	InspectAdapter(ctx context.Context, path string) (Inspection, error)
}

// Services lists the services, to find those a model serves.
// Implemented by the deployer's service store.
type Services interface {
	List(ctx context.Context) ([]state.Service, error)
}

// Registry is the model registry. It is safe for concurrent use.
type Registry struct {
	store    Store
	catalog  *catalog.Catalog
	inspect  Inspector
	services Services
	now      func() time.Time
}

// NewRegistry returns a Registry over the operator's catalog and the
// registered models in store. inspect may be nil: file sources are then
// refused, as on a deployer that does not mount the model store.
func NewRegistry(store Store, cat *catalog.Catalog, inspect Inspector, services Services) *Registry {
	return &Registry{store: store, catalog: cat, inspect: inspect, services: services, now: func() time.Time { return time.Now().UTC() }}
}

// Register checks and inspects a request and stores the model for the
// caller's owner, or for everyone when an admin asks. Nothing is stored
// when anything is wrong: bad input is errs.Invalid naming the
// parameter, a name in use errs.Conflict.
func (r *Registry) Register(ctx context.Context, caller auth.Key, req Request) (Model, error) {
	if caller.Restricted() {
		return Model{}, errs.E(errs.Forbidden, "a key restricted to some services cannot register models")
	}
	owner := caller.OwnerID
	if req.Public {
		if !caller.Admin {
			return Model{}, &errs.Error{Kind: errs.Forbidden, Param: "public", Msg: "only admins register models for everyone"}
		}
		owner = OwnerPublic
	}
	m, err := r.check(ctx, caller, owner, req)
	if err != nil {
		return Model{}, err
	}
	if err := r.nameFree(ctx, caller, owner, m.Name); err != nil {
		return Model{}, err
	}
	m.CreatedAt = r.now()
	if err := r.store.Create(ctx, m); err != nil {
		return Model{}, err
	}
	return m, nil
}

// check turns a request into a model, or says what is wrong with it.
func (r *Registry) check(ctx context.Context, caller auth.Key, owner string, req Request) (Model, error) {
	if !NamePattern.MatchString(req.Name) {
		return Model{}, errs.InvalidParam("name", "name must be 1-63 lowercase letters, digits or hyphens, starting and ending with a letter or digit")
	}
	display := strings.TrimSpace(req.DisplayName)
	if utf8.RuneCountInString(display) > maxDisplayName || strings.ContainsFunc(display, unicode.IsControl) {
		return Model{}, errs.InvalidParam("display_name", "display_name must be at most %d printable characters", maxDisplayName)
	}
	if req.ContextLength < 0 || req.ContextLength > maxContextLength {
		return Model{}, errs.InvalidParam("context_length", "context_length must be between 0 (the model's) and %d tokens", maxContextLength)
	}
	if req.MemoryGiB < 0 || req.MemoryGiB > maxMemoryGiB {
		return Model{}, errs.InvalidParam("memory_gib", "memory_gib must be between 0 (estimated) and %d", maxMemoryGiB)
	}
	if req.GPUs != nil && (*req.GPUs < 0 || *req.GPUs > maxGPUs) {
		return Model{}, errs.InvalidParam("gpus", "gpus must be between 0 (CPUs only) and %d", maxGPUs)
	}
	m := Model{Name: req.Name, DisplayName: display, Owner: owner, ContextLength: req.ContextLength, MemoryGiB: req.MemoryGiB}
	var err error
	switch {
	case req.Adapter != "" && req.Base == "":
		return Model{}, errs.InvalidParam("base", "a LoRA adapter needs the model it was trained on: set base to that model's name")
	case req.Base != "":
		err = r.fineTune(ctx, caller, req, &m)
	default:
		err = r.base(ctx, req, &m)
	}
	if err != nil {
		return Model{}, err
	}
	if m.Tasks, err = tasksFor(req.Tasks, m.Engine); err != nil {
		return Model{}, errs.InvalidParam("tasks", "%v", err)
	}
	if m.DisplayName == "" {
		m.DisplayName = m.Name
		if !m.FineTuned() && m.Inspection != nil && m.Inspection.ModelName != "" {
			m.DisplayName = m.Inspection.ModelName
		}
	}
	r.placeBy(&m)
	return m, nil
}

// base fills in a base model from its source: the format, engine and GPUs
// it implies and, for files on the model store, what they say.
func (r *Registry) base(ctx context.Context, req Request, m *Model) error {
	src, err := catalog.ParseSource(req.Source)
	if err != nil {
		return errs.InvalidParam("source", "%v", err)
	}
	m.Source = src.String()
	m.Format = src.Format()
	if src.Local() {
		insp, err := r.inspectWeights(ctx, src, req.ContextLength)
		if err != nil {
			return err
		}
		m.Inspection = insp
		m.Format = insp.Format
		if m.ContextLength == 0 {
			m.ContextLength = insp.EstimatedContext
		}
	}
	if m.Engine, err = engineFor(req.Engine, src, m.Format); err != nil {
		return errs.InvalidParam("engine", "%v", err)
	}
	if err := runnable(src, m.Engine); err != nil {
		return errs.InvalidParam("source", "%v", err)
	}
	m.GPUs = defaultGPUs(m.Format, m.Engine)
	if req.GPUs != nil {
		m.GPUs = *req.GPUs
	}
	return nil
}

// inspectWeights reads a model's files on the model store and estimates
// an instance's memory at the context length asked for, else the trained
// one up to defaultContextCap.
func (r *Registry) inspectWeights(ctx context.Context, src catalog.Source, asked int) (*Inspection, error) {
	if r.inspect == nil {
		return nil, errs.InvalidParam("source", "this deployer has no model store to read %s from: register the model by another source, or ask the operator to set MODELPORT_MODEL_DIRS", src)
	}
	insp, err := r.inspect.Inspect(ctx, src.Path, func(trained int) int {
		if asked > 0 {
			return asked
		}
		if trained > 0 {
			return min(trained, defaultContextCap)
		}
		return defaultContextCap
	})
	if err != nil {
		return nil, withParam(err, "source")
	}
	return &insp, nil
}

// fineTune fills in a fine-tuned model: its base's weights, engine and
// settings, the adapter its own, and its own settings where it gives
// them.
func (r *Registry) fineTune(ctx context.Context, caller auth.Key, req Request, m *Model) error {
	switch {
	case req.Adapter == "":
		return errs.InvalidParam("adapter", "a fine-tuned model needs its LoRA adapter: set adapter to its source")
	case req.Source != "":
		return errs.InvalidParam("source", "a fine-tuned model runs on its base's weights: leave source out and set base and adapter")
	}
	base, err := r.Get(ctx, caller, req.Base)
	if errs.KindOf(err) == errs.NotFound {
		return errs.InvalidParam("base", "unknown base model %q; GET /api/v1/models lists them", req.Base)
	}
	if err != nil {
		return err
	}
	if base.FineTuned() {
		return errs.InvalidParam("base", "base model %s is itself fine-tuned; name the model it was tuned from", base.Name)
	}
	if req.Engine != "" && req.Engine != base.Engine {
		return errs.InvalidParam("engine", "a fine-tuned model runs on its base's engine, %s", base.Engine)
	}
	src, err := catalog.ParseSource(req.Adapter)
	if err != nil {
		return errs.InvalidParam("adapter", "%v", err)
	}
	if err := runnable(src, base.Engine); err != nil {
		return errs.InvalidParam("adapter", "%v", err)
	}
	m.Base, m.Adapter = base.Name, src.String()
	m.Source, m.Format, m.Engine, m.GPUs = base.Source, base.Format, base.Engine, base.GPUs
	if req.GPUs != nil {
		m.GPUs = *req.GPUs
	}
	if m.ContextLength == 0 {
		m.ContextLength = base.ContextLength
	}
	if m.MemoryGiB == 0 {
		m.MemoryGiB = base.MemoryGiB
	}
	if len(req.Tasks) == 0 {
		req.Tasks = base.Tasks
	}
	for _, t := range req.Tasks {
		if slices.Contains(catalog.Tasks, t) && !base.Supports(t) {
			return errs.InvalidParam("tasks", "base model %s does not serve %s (it serves %s)", base.Name, t, strings.Join(base.Tasks, ", "))
		}
	}
	// The base's files again, for an estimate at this model's context.
	if b, err := catalog.ParseSource(base.Source); err == nil && b.Local() && base.Inspection != nil {
		insp, err := r.inspectWeights(ctx, b, m.ContextLength)
		if err != nil {
			return withParam(err, "base")
		}
		m.Inspection = insp
	}
	if src.Local() {
		if r.inspect == nil {
			return errs.InvalidParam("adapter", "this deployer has no model store to read %s from", src)
		}
		a, err := r.inspect.InspectAdapter(ctx, src.Path)
		if err != nil {
			return withParam(err, "adapter")
		}
		if m.Inspection == nil {
			m.Inspection = &Inspection{}
		}
		m.Inspection.Adapter = &a
	}
	return nil
}

// placeBy sets what the scaler reserves for an instance: memory_gib where
// given, else the estimate from the files for where the model runs, plus
// a fine-tuned model's adapter; nothing when neither is known.
func (r *Registry) placeBy(m *Model) {
	if m.MemoryGiB > 0 {
		m.MemoryBytes, m.GPUMemoryBytes = need(m.GPUs, int64(m.MemoryGiB)*GiB)
		return
	}
	insp := m.Inspection
	if insp == nil || insp.Format == "" {
		return
	}
	bytes := insp.MemoryBytes
	if m.GPUs > 0 {
		bytes = insp.GPUMemoryBytes
	}
	if insp.Adapter != nil {
		bytes += insp.Adapter.TensorBytes
	}
	m.MemoryBytes, m.GPUMemoryBytes = need(m.GPUs, bytes)
}

// nameFree checks that name means one model only to everyone who may see
// it: the catalog's and public names are everyone's, so a new model may
// not take one, and a public model may not take a name any owner uses.
func (r *Registry) nameFree(ctx context.Context, caller auth.Key, owner, name string) error {
	conflict := func(format string, args ...any) error {
		return &errs.Error{Kind: errs.Conflict, Param: "name", Msg: fmt.Sprintf(format, args...)}
	}
	if _, ok := r.catalog.Lookup(name); ok {
		return conflict("the catalog has a model named %s; choose another name", name)
	}
	if owner != OwnerPublic {
		if _, err := r.store.Get(ctx, OwnerPublic, name); err == nil {
			return conflict("a public model is named %s; choose another name", name)
		} else if errs.KindOf(err) != errs.NotFound {
			return err
		}
		if _, err := r.store.Get(ctx, owner, name); err == nil {
			return conflict("you already have a model named %s", name)
		} else if errs.KindOf(err) != errs.NotFound {
			return err
		}
		return nil
	}
	all, err := r.store.All(ctx)
	if err != nil {
		return err
	}
	for _, m := range all {
		if m.Name == name && m.Owner == OwnerPublic {
			return conflict("a public model named %s already exists", name)
		}
		if m.Name == name {
			return conflict("an owner's model is named %s; choose another name", name)
		}
	}
	return nil
}

// Get returns the model name means to the caller: its own, else a public
// one, else the catalog's. Anything else is errs.NotFound, so another
// owner's models stay unseen.
func (r *Registry) Get(ctx context.Context, caller auth.Key, name string) (Model, error) {
	// Registered names follow NamePattern; the catalog's may hold dots.
	for _, owner := range []string{caller.OwnerID, OwnerPublic} {
		if !NamePattern.MatchString(name) {
			break
		}
		m, err := r.store.Get(ctx, owner, name)
		if err == nil {
			return m, nil
		}
		if errs.KindOf(err) != errs.NotFound {
			return Model{}, err
		}
	}
	if c, ok := r.catalog.Lookup(name); ok {
		return FromCatalog(c), nil
	}
	return Model{}, errs.E(errs.NotFound, "model %q not found", name)
}

// List returns the models the caller may deploy: the catalog's in its
// order, then the public ones and the caller's own, each by name.
func (r *Registry) List(ctx context.Context, caller auth.Key) ([]Model, error) {
	var out []Model
	for _, c := range r.catalog.Models() {
		out = append(out, FromCatalog(c))
	}
	for _, owner := range []string{OwnerPublic, caller.OwnerID} {
		list, err := r.store.List(ctx, owner)
		if err != nil {
			return nil, err
		}
		slices.SortFunc(list, func(a, b Model) int { return cmp.Compare(a.Name, b.Name) })
		out = append(out, list...)
	}
	return out, nil
}

// Delete removes one of the caller's models, or, for an admin, a public
// one. A model a service still uses, or that a fine-tuned model is based
// on, is errs.Conflict naming them; a catalog model is errs.Forbidden:
// it changes with the catalog file.
func (r *Registry) Delete(ctx context.Context, caller auth.Key, name string) (Model, error) {
	if caller.Restricted() {
		return Model{}, errs.E(errs.Forbidden, "a key restricted to some services cannot delete models")
	}
	m, err := r.Get(ctx, caller, name)
	if err != nil {
		return Model{}, err
	}
	switch {
	case m.Owner == OwnerCatalog:
		return Model{}, errs.E(errs.Forbidden, "model %s is in the operator's catalog, which changes only with its file", name)
	case m.Owner == OwnerPublic && !caller.Admin:
		return Model{}, errs.E(errs.Forbidden, "model %s is public: only admins delete it", name)
	}
	users, err := r.usedBy(ctx, m)
	if err != nil {
		return Model{}, err
	}
	if len(users) > 0 {
		return Model{}, errs.E(errs.Conflict, "model %s is in use by %s; delete those first", name, strings.Join(users, ", "))
	}
	if err := r.store.Delete(ctx, m.Owner, m.Name); err != nil {
		return Model{}, err
	}
	return m, nil
}

// usedBy names what still needs m: services that serve it and are not
// deleted, by access name, and fine-tuned models based on it.
func (r *Registry) usedBy(ctx context.Context, m Model) ([]string, error) {
	services, err := r.services.List(ctx)
	if err != nil {
		return nil, err
	}
	var users []string
	for _, s := range services {
		if s.Model != nil && s.Model.Owner == m.Owner && s.Model.Name == m.Name && s.Status != state.StatusDeleted {
			users = append(users, "service "+s.AccessName)
		}
	}
	all, err := r.store.All(ctx)
	if err != nil {
		return nil, err
	}
	for _, ft := range all {
		if ft.Base == m.Name && (m.Owner == OwnerPublic || ft.Owner == m.Owner) {
			users = append(users, "fine-tuned model "+ft.Name)
		}
	}
	slices.Sort(users)
	return users, nil
}

// withParam sets param on an errs.Error that names none.
func withParam(err error, param string) error {
	if e, ok := errs.As(err); ok && e.Param == "" && e.Kind == errs.Invalid {
		c := *e
		c.Param = param
		return &c
	}
	return err
}
