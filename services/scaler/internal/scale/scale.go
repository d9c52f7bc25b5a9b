// Package scale is the scaler's domain: turning a service's desired
// instance count into placements on live workers, in both directions, and
// keeping the placements in step with what the workers report they run.
//
// It is level-triggered: each reconcile compares what should run (the
// service records and the placements) with what runs (the workers'
// heartbeats and instance records) and acts on the difference, so an event
// that is lost, late or handled out of order changes only how soon things
// converge, not where they end.
package scale

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// Store reads services, workers, placements and instances, records
// placements, and removes the instance records of workers that died.
// Implemented by internal/kvstore.
type Store interface {
	Service(ctx context.Context, id string) (state.Service, error)
	Services(ctx context.Context) ([]state.Service, error)
	LiveWorkers(ctx context.Context) ([]state.Worker, error)
	// Placements returns every placement; ServicePlacements one service's.
	Placements(ctx context.Context) ([]state.Placement, error)
	ServicePlacements(ctx context.Context, serviceID string) ([]state.Placement, error)
	// Place stores a placement, or replaces it (a failed one).
	Place(ctx context.Context, p state.Placement) error
	Unplace(ctx context.Context, p state.Placement) error
	// Instances returns every instance record; ServiceInstances one
	// service's.
	Instances(ctx context.Context) ([]state.Instance, error)
	ServiceInstances(ctx context.Context, serviceID string) ([]state.Instance, error)
	DeleteInstance(ctx context.Context, serviceID, instanceID string) error
}

// Publisher publishes events.
type Publisher interface {
	Publish(ctx context.Context, ev events.Event) error
}

// Option configures a Scaler.
type Option func(*Scaler)

// WithClock has the scaler read the time from now; tests move it forward.
func WithClock(now func() time.Time) Option { return func(s *Scaler) { s.now = now } }

// WithCatalog has the scaler reckon what instances need from cat; default
// the built-in catalog.
func WithCatalog(cat *catalog.Catalog) Option { return func(s *Scaler) { s.catalog = cat } }

// WithGrace sets how long a placement may go unlisted in its live worker's
// heartbeat before it is taken for lost and placed again; default
// DefaultGrace.
func WithGrace(d time.Duration) Option { return func(s *Scaler) { s.grace = d } }

// DefaultGrace is how long a placement may go unlisted in its live
// worker's heartbeat before it is placed again: the placement event's way
// to the worker and a few heartbeats. A worker lists an instance from the
// moment it takes its placement, while its engine starts.
const DefaultGrace = 15 * time.Second

// avoidFor is how long a worker that refused or lost one of a service's
// instances is not given another, where another worker can take it.
const avoidFor = time.Minute

// resendOrphan is how often the release of an instance that runs without a
// placement is announced again while its worker still holds it.
const resendOrphan = 10 * time.Second

// Scaler places and releases instances. Reconciles are serialized, so the
// event handlers and the periodic sweep never place or release the same
// slot twice. Its methods are safe for concurrent use; one scaler (the
// leader) acts at a time.
type Scaler struct {
	store   Store
	pub     Publisher
	log     *slog.Logger
	now     func() time.Time
	catalog *catalog.Catalog
	grace   time.Duration
	started time.Time

	mu sync.Mutex
	// unplaceable is the reason last announced, per service, for
	// instances that could not be placed.
	unplaceable map[string]string
	// inflight holds the placements on live workers that their worker's
	// heartbeat does not list yet, by instance key: they take room the
	// heartbeat does not show.
	inflight map[string]pending
	// unlisted says since when a placement has gone unlisted in its live
	// worker's heartbeat, by instance key.
	unlisted map[string]time.Time
	// orphans says when the release of an instance running without a
	// placement was last announced, by instance key.
	orphans map[string]time.Time
	// avoid says until when a worker is not given a service's instances,
	// by service and worker.
	avoid map[avoidKey]avoidance
}

type pending struct {
	workerID, serviceID, instanceID string
	need                            Need
}

type avoidKey struct{ serviceID, workerID string }

// avoidance is how long a worker is not given a service's instances:
// strictly after it refused one, as a last resort after it lost one.
type avoidance struct {
	until  time.Time
	strict bool
}

// New returns a Scaler.
func New(store Store, pub Publisher, log *slog.Logger, opts ...Option) *Scaler {
	s := &Scaler{
		store: store, pub: pub, log: log, now: time.Now, catalog: catalog.Default(), grace: DefaultGrace,
		unplaceable: map[string]string{}, inflight: map[string]pending{}, unlisted: map[string]time.Time{},
		orphans: map[string]time.Time{}, avoid: map[avoidKey]avoidance{},
	}
	for _, o := range opts {
		o(s)
	}
	s.started = s.now()
	return s
}

// Forget drops what the scaler remembers between reconciles (placements
// not yet listed, releases announced, workers to avoid): a scaler that
// takes the lead starts afresh, from the buckets. Like a new scaler, it
// then judges no worker dead for a worker TTL: after a NATS outage, which
// costs the leader its lease, every heartbeat may have expired, and the
// workers need a beat to be seen again.
func (s *Scaler) Forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.started = s.now()
	clear(s.unplaceable)
	clear(s.inflight)
	clear(s.unlisted)
	clear(s.orphans)
	clear(s.avoid)
}

// ReconcileService brings one service to its desired instance count:
// desired is its Instances, or zero once it is deleting or deleted. It
// reads only that service's records (and the workers' heartbeats). A
// service whose record no longer exists has all its placements released.
func (s *Scaler) ReconcileService(ctx context.Context, serviceID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reconcileService(ctx, serviceID)
}

// reconcileService is ReconcileService with s.mu held.
func (s *Scaler) reconcileService(ctx context.Context, serviceID string) error {
	var svc *state.Service
	got, err := s.store.Service(ctx, serviceID)
	switch {
	case errs.KindOf(err) == errs.NotFound:
	case err != nil:
		return err
	default:
		svc = &got
	}
	ps, err := s.store.ServicePlacements(ctx, serviceID)
	if err != nil {
		return err
	}
	insts, err := s.store.ServiceInstances(ctx, serviceID)
	if err != nil {
		return err
	}
	v, err := s.look(ctx)
	if err != nil {
		return err
	}
	for key, p := range s.inflight {
		if p.serviceID == serviceID {
			delete(s.inflight, key)
		}
	}
	return s.reconcileOne(ctx, v, serviceID, svc, ps, insts)
}

// ReconcileAll reconciles every service, releases the placements of
// services that no longer exist and the instances that run without a
// placement; it is the sweep that repairs anything an event alone did
// not. It goes on past a service it cannot place, and returns the first
// error.
func (s *Scaler) ReconcileAll(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	services, err := s.store.Services(ctx)
	if err != nil {
		return err
	}
	placements, err := s.store.Placements(ctx)
	if err != nil {
		return err
	}
	instances, err := s.store.Instances(ctx)
	if err != nil {
		return err
	}
	v, err := s.look(ctx)
	if err != nil {
		return err
	}
	byService := map[string]*serviceRecords{}
	of := func(id string) *serviceRecords {
		r, ok := byService[id]
		if !ok {
			r = &serviceRecords{}
			byService[id] = r
		}
		return r
	}
	for i := range services {
		of(services[i].ID).svc = &services[i]
	}
	for _, p := range placements {
		r := of(p.ServiceID)
		r.ps = append(r.ps, p)
	}
	for _, in := range instances {
		r := of(in.ServiceID)
		r.insts = append(r.insts, in)
	}
	// Instances workers hold for services with no record at all, nor any
	// placement, are released too.
	for _, h := range v.held {
		if h.ServiceID != "" {
			of(h.ServiceID)
		}
	}
	// The sweep knows every placement: what takes room is counted afresh,
	// before any service is placed.
	clear(s.inflight)
	for _, p := range placements {
		h, held := v.held[p.InstanceID]
		_, refused := v.refused[p.InstanceID]
		if p.Failed != "" || !v.live[p.WorkerID] || refused || held && h.WorkerID == p.WorkerID {
			continue
		}
		need := Need{}
		if r := byService[p.ServiceID]; r.svc != nil {
			need = needOn(s.catalog, *r.svc, workerOf(v, p.WorkerID))
		}
		s.inflight[state.InstanceKey(p.ServiceID, p.InstanceID)] = pending{workerID: p.WorkerID, serviceID: p.ServiceID, instanceID: p.InstanceID, need: need}
	}
	s.prune(v, placements)

	ids := make([]string, 0, len(byService))
	for id := range byService {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var errsSeen []error
	for _, id := range ids {
		r := byService[id]
		if err := s.reconcileOne(ctx, v, id, r.svc, r.ps, r.insts); err != nil {
			errsSeen = append(errsSeen, err)
			if ctx.Err() != nil {
				break
			}
		}
	}
	return errors.Join(errsSeen...)
}

type serviceRecords struct {
	svc   *state.Service
	ps    []state.Placement
	insts []state.Instance
}

// view is what the workers report, read once per reconcile.
type view struct {
	now     time.Time
	workers []state.Worker
	live    map[string]bool
	// held maps the ID of every instance a live worker holds to the
	// worker and the instance's service (empty if the worker does not say).
	held map[string]heldBy
	// refused maps the instance IDs of refused placements to the refusal
	// and the worker that refused.
	refused map[string]refusedBy
}

type heldBy struct {
	WorkerID, ServiceID string
}

type refusedBy struct {
	state.Refusal
	WorkerID string
}

func (s *Scaler) look(ctx context.Context) (*view, error) {
	workers, err := s.store.LiveWorkers(ctx)
	if err != nil {
		return nil, err
	}
	v := &view{now: s.now(), workers: workers, live: map[string]bool{}, held: map[string]heldBy{}, refused: map[string]refusedBy{}}
	for _, w := range workers {
		v.live[w.ID] = true
		for _, id := range w.Instances {
			v.held[id] = heldBy{WorkerID: w.ID}
		}
		for _, h := range w.Held {
			v.held[h.InstanceID] = heldBy{WorkerID: w.ID, ServiceID: h.ServiceID}
		}
		for _, r := range w.Refused {
			v.refused[r.InstanceID] = refusedBy{Refusal: r, WorkerID: w.ID}
		}
	}
	return v, nil
}

// prune forgets what the scaler remembers of placements and instances
// that are gone; s.mu is held.
func (s *Scaler) prune(v *view, placements []state.Placement) {
	placed := map[string]bool{}
	for _, p := range placements {
		placed[state.InstanceKey(p.ServiceID, p.InstanceID)] = true
	}
	for key := range s.unlisted {
		if !placed[key] {
			delete(s.unlisted, key)
		}
	}
	heldKeys := map[string]bool{}
	for id, h := range v.held {
		heldKeys[state.InstanceKey(h.ServiceID, id)] = true
	}
	for key := range s.orphans {
		if !heldKeys[key] {
			delete(s.orphans, key)
		}
	}
	for k, a := range s.avoid {
		if v.now.After(a.until) {
			delete(s.avoid, k)
		}
	}
}

// reconcileOne reconciles one service from its record (nil: none), its
// placements and its instance records; s.mu is held.
func (s *Scaler) reconcileOne(ctx context.Context, v *view, serviceID string, svc *state.Service, ps []state.Placement, insts []state.Instance) error {
	placedKeys := map[string]bool{}
	for _, p := range ps {
		placedKeys[p.InstanceID] = true
	}
	ready := map[string]bool{}
	anyReady := false
	for _, in := range insts {
		if in.Status == state.InstanceReady && v.live[in.WorkerID] {
			ready[in.ID] = true
			anyReady = true
		}
	}

	// Placements on dead workers are forgotten, and so are their instance
	// records, so the router stops routing to them; their slots are
	// placed again below.
	var counted []state.Placement
	forgotten := map[string]bool{}
	for _, p := range ps {
		if p.Failed == "" && s.dead(p.WorkerID, p.PlacedAt, v.live, v.now) {
			if err := s.forget(ctx, p); err != nil {
				return err
			}
			forgotten[p.InstanceID] = true
			continue
		}
		counted = append(counted, p)
	}
	// Records of dead workers' instances whose placements are already gone
	// (released while the worker died, so it never drained them) would
	// never be removed otherwise, and their time would never end.
	for _, in := range insts {
		if !placedKeys[in.ID] && !forgotten[in.ID] && s.dead(in.WorkerID, in.UpdatedAt, v.live, v.now) {
			if err := s.announceGone(ctx, in.ServiceID, in.ID, in.WorkerID); err != nil {
				return err
			}
			if err := s.store.DeleteInstance(ctx, in.ServiceID, in.ID); err != nil {
				return err
			}
			s.log.WarnContext(ctx, "instance record of a dead worker removed", "service_id", in.ServiceID, "instance_id", in.ID, "worker_id", in.WorkerID)
		}
	}

	// Compare the rest with what the workers report.
	kept := counted[:0]
	for _, p := range counted {
		keep, err := s.check(ctx, v, svc, p, anyReady)
		if err != nil {
			return err
		}
		if keep {
			kept = append(kept, p)
		}
	}
	counted = kept

	// Instances live workers hold without a placement are released.
	for id, h := range v.held {
		if h.ServiceID != serviceID || placedKeys[id] {
			continue
		}
		if err := s.releaseOrphan(ctx, v, serviceID, id, h.WorkerID); err != nil {
			return err
		}
	}
	// A worker that does not say whose instances it holds: its records do.
	for _, in := range insts {
		if h, ok := v.held[in.ID]; ok && h.ServiceID == "" && h.WorkerID == in.WorkerID && !placedKeys[in.ID] {
			if err := s.releaseOrphan(ctx, v, serviceID, in.ID, in.WorkerID); err != nil {
				return err
			}
		}
	}

	want, reason := desired(svc)
	rooms := s.rooms(v)
	if len(counted) > want {
		return s.releaseExtra(ctx, counted, want, reason, ready, rooms)
	}
	if svc == nil || len(counted) == want || svc.Status == state.StatusFailed {
		if svc == nil || svc.Status != state.StatusFailed {
			delete(s.unplaceable, serviceID)
		}
		return nil
	}
	for placed := len(counted); placed < want; placed++ {
		room, why := s.choose(v, *svc, rooms)
		if room == nil {
			s.placementFailed(ctx, *svc, want, placed, why)
			return errs.E(errs.Unavailable, "%s for service %s", why, svc.ID)
		}
		if err := s.place(ctx, *svc, room); err != nil {
			return err
		}
	}
	delete(s.unplaceable, serviceID)
	return nil
}

// check compares a placement on a live (or not yet seen) worker with that
// worker's heartbeat and reports whether it still counts as placed:
//   - a failed placement counts while nothing of its service serves and
//     the owner has not retried the service, so a crash-looping instance
//     is not placed again; then it is removed;
//   - one its worker refused is removed, and placed elsewhere;
//   - one its worker holds counts;
//   - one its worker has not listed for the grace period (its event lost,
//     or refused by a worker that could not say so) is released and
//     placed again; until then it counts, and takes room.
//
// s.mu is held.
func (s *Scaler) check(ctx context.Context, v *view, svc *state.Service, p state.Placement, anyReady bool) (bool, error) {
	key := state.InstanceKey(p.ServiceID, p.InstanceID)
	if p.Failed != "" {
		if svc != nil && svc.Status != state.StatusDeleting && svc.Status != state.StatusDeleted && svc.Attempt == p.FailedAttempt && !anyReady {
			return true, nil
		}
		return false, s.store.Unplace(ctx, p)
	}
	if r, ok := v.refused[p.InstanceID]; ok && r.WorkerID == p.WorkerID {
		if err := s.store.Unplace(ctx, p); err != nil {
			return false, err
		}
		delete(s.unlisted, key)
		s.avoid[avoidKey{p.ServiceID, p.WorkerID}] = avoidance{until: v.now.Add(avoidFor), strict: true}
		s.log.WarnContext(ctx, "placement refused; placing it elsewhere", "service_id", p.ServiceID, "instance_id", p.InstanceID,
			"worker_id", p.WorkerID, "reason", r.Reason)
		return false, nil
	}
	if !v.live[p.WorkerID] {
		return true, nil // not seen yet, and not dead yet
	}
	if h, ok := v.held[p.InstanceID]; ok && h.WorkerID == p.WorkerID {
		delete(s.unlisted, key)
		return true, nil
	}
	since, ok := s.unlisted[key]
	if !ok {
		since = v.now
		s.unlisted[key] = since
	}
	if v.now.Sub(since) <= s.grace || v.now.Sub(p.PlacedAt) <= s.grace {
		need := Need{}
		if svc != nil {
			need = needOn(s.catalog, *svc, workerOf(v, p.WorkerID))
		}
		s.inflight[key] = pending{workerID: p.WorkerID, serviceID: p.ServiceID, instanceID: p.InstanceID, need: need}
		return true, nil
	}
	reason := fmt.Sprintf("not running on worker %s %s after it was placed; placed again", p.WorkerID, v.now.Sub(p.PlacedAt).Round(time.Second))
	if err := s.release(ctx, p, reason); err != nil {
		return false, err
	}
	delete(s.unlisted, key)
	s.avoid[avoidKey{p.ServiceID, p.WorkerID}] = avoidance{until: v.now.Add(avoidFor)}
	return false, nil
}

func workerOf(v *view, id string) state.Worker {
	for _, w := range v.workers {
		if w.ID == id {
			return w
		}
	}
	return state.Worker{ID: id}
}

// releaseOrphan announces the release of an instance a live worker holds
// without a placement, at most every resendOrphan while it still holds
// it: a release handled before its placement, or lost.
func (s *Scaler) releaseOrphan(ctx context.Context, v *view, serviceID, instanceID, workerID string) error {
	key := state.InstanceKey(serviceID, instanceID)
	if last, ok := s.orphans[key]; ok && v.now.Sub(last) < resendOrphan {
		return nil
	}
	ev := events.InstanceReleasedV1{
		Meta: events.NewMeta(), InstanceID: instanceID, ServiceID: serviceID, WorkerID: workerID, Reason: "runs without a placement",
	}
	if err := s.pub.Publish(ctx, ev); err != nil {
		return fmt.Errorf("announce release of orphan %s: %w", instanceID, err)
	}
	s.orphans[key] = v.now
	s.log.WarnContext(ctx, "instance runs without a placement; released", "service_id", serviceID, "instance_id", instanceID, "worker_id", workerID)
	return nil
}

// rooms reckons each live worker's room; s.mu is held.
func (s *Scaler) rooms(v *view) map[string]*Room {
	rooms := make(map[string]*Room, len(v.workers))
	for _, w := range v.workers {
		rooms[w.ID] = newRoom(w)
	}
	for key, p := range s.inflight {
		r, ok := rooms[p.workerID]
		if h, held := v.held[p.instanceID]; !ok || held && h.WorkerID == p.workerID {
			delete(s.inflight, key) // gone, or listed: the heartbeat counts it
			continue
		}
		r.take(p.need)
	}
	return rooms
}

// choose returns the room of the live worker an instance of svc goes to:
// of those it fits, the one with the most free slots (ties: the first
// listed), passing over those that lately refused one of the service's
// instances, and using those that lost one only when no other fits. With
// none it returns nil and why: refusals first, then missing GPUs, then
// missing memory (saying what an instance needs and what each worker
// with a free slot has), then full workers.
func (s *Scaler) choose(v *view, svc state.Service, rooms map[string]*Room) (*Room, string) {
	var best, lastResort *Room
	var gpuShort, refused int
	needed := 0
	var memShort []string
	var memNeed Need
	for _, w := range v.workers {
		r := rooms[w.ID]
		n := needOn(s.catalog, svc, w)
		if lack, why := fits(*r, n); lack != enough {
			switch lack {
			case fewGPUs:
				gpuShort++
				needed = max(needed, n.GPUs)
			case littleMemory, smallGPUs:
				memShort = append(memShort, why)
				memNeed = n
			}
			continue
		}
		if a, ok := s.avoid[avoidKey{svc.ID, w.ID}]; ok && v.now.Before(a.until) {
			if a.strict {
				refused++
			} else if lastResort == nil || r.Slots > lastResort.Slots {
				lastResort = r
			}
			continue
		}
		if best == nil || r.Slots > best.Slots {
			best = r
		}
	}
	switch n := len(v.workers); {
	case best != nil:
		return best, ""
	case lastResort != nil:
		return lastResort, ""
	case refused > 0:
		return nil, fmt.Sprintf("refused by the workers with room (%d live workers)", n)
	case gpuShort > 0:
		return nil, fmt.Sprintf("no worker has %d free %s for an instance (%d live workers)", needed, plural(needed, "GPU"), n)
	case len(memShort) > 0:
		return nil, noMemory(memNeed, memShort)
	default:
		return nil, fmt.Sprintf("no worker has room (%d live workers)", n)
	}
}

// noMemory is the reason an instance needing n fits nowhere for memory:
// what it needs, and what the first few workers short of it have.
func noMemory(n Need, short []string) string {
	what := "an instance needs " + gib(max(n.Memory, n.SimMemory)) + " of memory"
	if n.GPUs > 0 {
		what = fmt.Sprintf("an instance needs %s of GPU memory over %d GPU(s)", gib(n.GPUMemory), n.GPUs)
	}
	const most = 3
	where := short
	if len(where) > most {
		where = append(where[:most:most], fmt.Sprintf("%d more", len(short)-most))
	}
	return fmt.Sprintf("no worker has the memory: %s (%s)", what, strings.Join(where, "; "))
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// placementFailed announces that a service's instances cannot all be
// placed, once per reason and count: the scaler retries at every
// reconcile.
func (s *Scaler) placementFailed(ctx context.Context, svc state.Service, wanted, placed int, reason string) {
	key := fmt.Sprintf("%d/%d %s", placed, wanted, reason)
	if s.unplaceable[svc.ID] == key {
		return
	}
	ev := events.PlacementFailedV1{Meta: events.NewMeta(), ServiceID: svc.ID, OwnerID: svc.OwnerID, Wanted: wanted, Placed: placed, Reason: reason}
	if err := s.pub.Publish(ctx, ev); err != nil {
		s.log.WarnContext(ctx, "announce failed placement", "service_id", svc.ID, "err", err)
		return
	}
	s.unplaceable[svc.ID] = key
	s.log.WarnContext(ctx, "instances not placed", "service_id", svc.ID, "wanted", wanted, "placed", placed, "reason", reason)
}

// InstanceFailed handles an instance its worker gave up on. If the service
// still has a ready instance, the placement is removed and the service
// reconciled, placing a replacement. If not, the placement is kept,
// marked failed: it stands in the instance's place, so no reconcile (the
// sweep included) replaces it, until the owner retries the service (the
// deployer fails it by the same rule) or another instance becomes ready.
// Deciding here from the instances, not from the service's status, keeps
// the two from depending on which of them handles the event first.
func (s *Scaler) InstanceFailed(ctx context.Context, ev events.InstanceFailedV1) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var svc *state.Service
	got, err := s.store.Service(ctx, ev.ServiceID)
	switch {
	case errs.KindOf(err) == errs.NotFound:
	case err != nil:
		return err
	default:
		svc = &got
	}
	ps, err := s.store.ServicePlacements(ctx, ev.ServiceID)
	if err != nil {
		return err
	}
	insts, err := s.store.ServiceInstances(ctx, ev.ServiceID)
	if err != nil {
		return err
	}
	serving := slices.ContainsFunc(insts, func(in state.Instance) bool {
		return in.ID != ev.InstanceID && in.Status == state.InstanceReady
	})
	i := slices.IndexFunc(ps, func(p state.Placement) bool { return p.InstanceID == ev.InstanceID })
	if i >= 0 && ps[i].Failed == "" {
		p := ps[i]
		if serving || svc == nil || svc.Status == state.StatusDeleting || svc.Status == state.StatusDeleted {
			err = s.store.Unplace(ctx, p)
		} else {
			p.Failed, p.FailedAttempt = ev.Reason, svc.Attempt
			err = s.store.Place(ctx, p)
		}
		if err != nil {
			return err
		}
	}
	s.log.WarnContext(ctx, "instance failed", "service_id", ev.ServiceID, "instance_id", ev.InstanceID,
		"worker_id", ev.WorkerID, "reason", ev.Reason, "replaced", serving)
	if !serving {
		return nil
	}
	return s.reconcileService(ctx, ev.ServiceID)
}

// desired is how many instances a service should have, and the reason
// given for releasing those above it.
func desired(svc *state.Service) (int, string) {
	if svc == nil || svc.Status == state.StatusDeleting || svc.Status == state.StatusDeleted {
		return 0, "service deleted"
	}
	n := max(svc.Instances, 0)
	return n, fmt.Sprintf("scaled down to %d", n)
}

// dead reports whether a worker is gone: absent from the workers bucket,
// whose TTL drops a worker that stopped beating, for longer than a TTL
// since since. A scaler younger than a TTL decides nothing: the workers it
// cannot see yet may simply not have beaten since it started.
func (s *Scaler) dead(workerID string, since time.Time, live map[string]bool, now time.Time) bool {
	return !live[workerID] && now.Sub(since) > state.WorkerTTL && now.Sub(s.started) > state.WorkerTTL
}

// forget announces that a dead worker's instance is gone, then removes its
// placement and its instance record. The announcement comes first so that
// it is made at least once: if it fails, nothing is removed and the next
// reconcile tries again; if a removal fails after it, the next reconcile
// announces the loss again, which its consumers take as the same loss.
func (s *Scaler) forget(ctx context.Context, p state.Placement) error {
	if err := s.announceGone(ctx, p.ServiceID, p.InstanceID, p.WorkerID); err != nil {
		return err
	}
	if err := s.store.Unplace(ctx, p); err != nil {
		return err
	}
	if err := s.store.DeleteInstance(ctx, p.ServiceID, p.InstanceID); err != nil {
		return fmt.Errorf("forget instance %s of dead worker %s: %w", p.InstanceID, p.WorkerID, err)
	}
	s.log.WarnContext(ctx, "worker gone; instance unplaced", "service_id", p.ServiceID, "instance_id", p.InstanceID, "worker_id", p.WorkerID)
	return nil
}

// announceGone publishes the release of an instance whose worker stopped
// beating, with WorkerGone set and the time the scaler judged it dead. A
// dead worker announces no stop, so billing ends the instance's time here;
// should the worker come back, it stops the instance, whose slot has been
// placed again elsewhere.
func (s *Scaler) announceGone(ctx context.Context, serviceID, instanceID, workerID string) error {
	m := events.NewMeta()
	m.OccurredAt = s.now().UTC()
	ev := events.InstanceReleasedV1{
		Meta: m, InstanceID: instanceID, ServiceID: serviceID, WorkerID: workerID,
		Reason: fmt.Sprintf("worker %s stopped beating", workerID), WorkerGone: true,
	}
	if err := s.pub.Publish(ctx, ev); err != nil {
		return fmt.Errorf("announce loss of instance %s on dead worker %s: %w", instanceID, workerID, err)
	}
	return nil
}

// releaseExtra releases placements of one service until want remain:
// failed placements first (nothing runs them), then instances not ready
// yet (they serve nothing), then those on the fullest worker, then the
// newest.
func (s *Scaler) releaseExtra(ctx context.Context, ps []state.Placement, want int, reason string, ready map[string]bool, rooms map[string]*Room) error {
	left := append([]state.Placement(nil), ps...)
	for len(left) > want {
		best := 0
		for i := 1; i < len(left); i++ {
			if releaseFirst(left[i], left[best], ready, rooms) {
				best = i
			}
		}
		p := left[best]
		var err error
		if p.Failed != "" {
			err = s.store.Unplace(ctx, p)
		} else {
			err = s.release(ctx, p, reason)
		}
		if err != nil {
			return err
		}
		left = append(left[:best], left[best+1:]...)
	}
	return nil
}

// releaseFirst reports whether a should be released before b.
func releaseFirst(a, b state.Placement, ready map[string]bool, rooms map[string]*Room) bool {
	if fa, fb := a.Failed != "", b.Failed != ""; fa != fb {
		return fa
	}
	if ra, rb := ready[a.InstanceID], ready[b.InstanceID]; ra != rb {
		return !ra
	}
	free := func(workerID string) int {
		if r, ok := rooms[workerID]; ok {
			return r.Slots
		}
		return 0
	}
	if c := cmp.Compare(free(a.WorkerID), free(b.WorkerID)); c != 0 {
		return c < 0
	}
	if !a.PlacedAt.Equal(b.PlacedAt) {
		return a.PlacedAt.After(b.PlacedAt)
	}
	return a.InstanceID < b.InstanceID
}

// release removes a placement and tells its worker to stop the instance.
// If the announcement fails, the placement stays removed: the worker then
// holds the instance without a placement, and the next reconcile releases
// it as an orphan.
func (s *Scaler) release(ctx context.Context, p state.Placement, reason string) error {
	if err := s.store.Unplace(ctx, p); err != nil {
		return err
	}
	key := state.InstanceKey(p.ServiceID, p.InstanceID)
	delete(s.inflight, key)
	ev := events.InstanceReleasedV1{
		Meta: events.NewMeta(), InstanceID: p.InstanceID, ServiceID: p.ServiceID, WorkerID: p.WorkerID, Reason: reason,
	}
	if err := s.pub.Publish(ctx, ev); err != nil {
		return fmt.Errorf("announce release of %s: %w", p.InstanceID, err)
	}
	s.orphans[key] = s.now()
	s.log.InfoContext(ctx, "instance released", "service_id", p.ServiceID, "instance_id", p.InstanceID, "worker_id", p.WorkerID, "reason", reason)
	return nil
}

// place stores a placement on room's worker and announces it. The
// placement stays even if the announcement fails, since JetStream may have
// stored it all the same: taking the placement back would leave the
// instance running without one. If the event was lost, the worker never
// lists the instance and the placement is placed again after the grace
// period.
func (s *Scaler) place(ctx context.Context, svc state.Service, room *Room) error {
	w := room.Worker
	p := state.Placement{
		InstanceID: uuid.NewString(), ServiceID: svc.ID, WorkerID: w.ID,
		AccessName: svc.AccessName, BaseModel: svc.BaseModel, Task: svc.Task, Engine: svc.Engine,
		PlacedAt: s.now().UTC(), Model: svc.Model,
	}
	if err := s.store.Place(ctx, p); err != nil {
		return err
	}
	need := needOn(s.catalog, svc, w)
	room.take(need)
	s.inflight[state.InstanceKey(p.ServiceID, p.InstanceID)] = pending{workerID: w.ID, serviceID: svc.ID, instanceID: p.InstanceID, need: need}
	ev := events.InstancePlacedV1{
		Meta: events.NewMeta(), InstanceID: p.InstanceID, ServiceID: p.ServiceID, WorkerID: p.WorkerID,
		AccessName: p.AccessName, BaseModel: p.BaseModel, Task: p.Task, Engine: p.Engine, Model: p.Model,
	}
	if err := s.pub.Publish(ctx, ev); err != nil {
		return fmt.Errorf("announce placement %s: %w", p.InstanceID, err)
	}
	s.log.InfoContext(ctx, "instance placed", "service_id", svc.ID, "instance_id", p.InstanceID, "worker_id", w.ID, "gpus", need.GPUs, "memory", need.Memory)
	return nil
}
