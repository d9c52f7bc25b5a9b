package transport

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/nats-io/nats.go/jetstream"
)

// ServiceWatcher follows the services bucket; jetstream.KeyValue
// implements it.
type ServiceWatcher interface {
	WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error)
}

// EventStreams opens the event streams; jetstream.JetStream implements it.
type EventStreams interface {
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
}

// Live serves the control API's live views: a server-sent event stream of
// the caller's services as they change, and a service's recent lifecycle
// events. It is safe for concurrent use.
type Live struct {
	m        *deploy.Manager
	services ServiceWatcher
	streams  EventStreams
	done     <-chan struct{}
	log      *slog.Logger

	// Heartbeat is how often an idle watch stream sends a comment line,
	// so proxies and clients can tell a quiet stream from a dead one.
	Heartbeat time.Duration
	// Lifetime is how long one watch stream lasts. The client then
	// reconnects and its key is checked again, so a revoked key stops
	// seeing changes within Lifetime.
	Lifetime time.Duration
}

// NewLive returns a Live reading services from the services bucket and
// lifecycle events from the DEPLOY, SCALE and WORKER streams. Closing
// done ends every open watch stream: an HTTP server's graceful shutdown
// waits for open responses, and a watch stream never ends by itself.
func NewLive(m *deploy.Manager, services ServiceWatcher, streams EventStreams, done <-chan struct{}, log *slog.Logger) *Live {
	return &Live{m: m, services: services, streams: streams, done: done, log: log, Heartbeat: 15 * time.Second, Lifetime: 10 * time.Minute}
}

// Option adds routes to the control API that NewHandler returns.
type Option func(*handler, *http.ServeMux)

// WithLive adds GET /api/v1/services/watch and
// GET /api/v1/services/{id}/events, served by l.
func WithLive(l *Live) Option {
	return func(h *handler, mux *http.ServeMux) {
		mux.HandleFunc("GET /api/v1/services/watch", func(w http.ResponseWriter, r *http.Request) { l.watch(w, r, h) })
		mux.HandleFunc("GET /api/v1/services/{id}/events", func(w http.ResponseWriter, r *http.Request) { l.events(w, r, h) })
	}
}

// visible says whether the caller may see s; the same rule as
// deploy.Manager.List: admins see every service, others their owner's,
// and a restricted key only the services it names.
func visible(k auth.Key, s state.Service) bool {
	return k.Reaches(s.OwnerID, s.ID)
}

// watch streams the caller's services as text/event-stream:
//
//	event: snapshot   data: every visible service but deleted ones, oldest first (once, first)
//	event: service    data: one service that changed (a deleted one has status "deleted")
//	event: removed    data: {"id": "..."} for a service whose record is gone
//
// with a comment line every Heartbeat, until Lifetime ends it. A client
// that reconnects gets a fresh snapshot, so the stream carries no event
// IDs.
func (l *Live) watch(w http.ResponseWriter, r *http.Request, h *handler) {
	who := caller(r)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	kw, err := l.services.WatchAll(ctx)
	if err != nil {
		h.fail(w, r, errs.Wrap(errs.Unavailable, err, "watch services"))
		return
	}
	defer func() { _ = kw.Stop() }()

	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Accel-Buffering", "no") // proxies must not buffer the stream
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// A client that stops reading must not hold this goroutine and its
	// watcher: every write has a deadline.
	deadline := func() { _ = rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout)) }
	send := func(event string, v any) bool {
		b, err := json.Marshal(v)
		if err != nil {
			return false
		}
		deadline()
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	deadline()
	if _, err := io.WriteString(w, "retry: 2000\n\n"); err != nil || rc.Flush() != nil {
		return
	}

	var (
		initial []state.Service     // until the snapshot is sent
		live    bool                // the snapshot was sent
		sent    = map[string]bool{} // IDs the client holds
	)
	beat := time.NewTicker(cmp.Or(max(l.Heartbeat, 0), 15*time.Second))
	defer beat.Stop()
	end := time.NewTimer(cmp.Or(max(l.Lifetime, 0), 10*time.Minute))
	defer end.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.done:
			return
		case <-end.C:
			return
		case <-beat.C:
			deadline()
			if _, err := io.WriteString(w, ": heartbeat\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case e, ok := <-kw.Updates():
			if !ok {
				return
			}
			if e == nil { // every current value has been delivered
				slices.SortFunc(initial, func(a, b state.Service) int {
					return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
				})
				for _, s := range initial {
					sent[s.ID] = true
				}
				if initial == nil {
					initial = []state.Service{}
				}
				if !send("snapshot", initial) {
					return
				}
				initial, live = nil, true
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				id := e.Key()
				if !live {
					initial = slices.DeleteFunc(initial, func(s state.Service) bool { return s.ID == id })
				} else if sent[id] {
					delete(sent, id)
					if !send("removed", map[string]string{"id": id}) {
						return
					}
				}
				continue
			}
			var s state.Service
			if err := json.Unmarshal(e.Value(), &s); err != nil {
				l.log.WarnContext(ctx, "watch: undecodable service record", "key", e.Key(), "err", err)
				continue
			}
			s.RoutingPolicy = s.Routing()
			if !visible(who, s) {
				continue
			}
			if !live {
				if s.Status != state.StatusDeleted {
					initial = append(initial, s)
				}
				continue
			}
			if s.Status == state.StatusDeleted {
				if !sent[s.ID] {
					continue
				}
				delete(sent, s.ID)
			} else {
				sent[s.ID] = true
			}
			if !send("service", s) {
				return
			}
		}
	}
}

// watchWriteTimeout bounds each write to a watch stream.
const watchWriteTimeout = 30 * time.Second

// Event limits.
const (
	defaultEventLimit = 20
	maxEventLimit     = 200
	// eventClockSkew is how much earlier than a service's creation time
	// the events scan starts, in case the deployer's clock runs ahead of
	// the NATS server's.
	eventClockSkew = 30 * time.Second
)

// lifecycleStreams are the streams a service's lifecycle events are on.
var lifecycleStreams = []string{events.StreamDeploy, events.StreamScale, events.StreamWorker}

// LifecycleEvent is one event in a service's life as the events endpoint
// shows it: what happened, and to which instance. It leaves out what only
// operators should see, such as engine endpoints and log tails.
type LifecycleEvent struct {
	ID         string    `json:"event_id"`
	Type       string    `json:"type"` // the subject without a worker suffix, e.g. "worker.instance.ready.v1"
	OccurredAt time.Time `json:"occurred_at"`
	InstanceID string    `json:"instance_id,omitempty"`
	Message    string    `json:"message"`
}

// events answers a service's most recent lifecycle events, newest first:
// at most ?limit= of them (default 20, at most 200). Another owner's
// service is 404, as in GET /api/v1/services/{id}.
func (l *Live) events(w http.ResponseWriter, r *http.Request, h *handler) {
	limit := defaultEventLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxEventLimit {
			h.fail(w, r, errs.InvalidParam("limit", "limit must be a whole number between 1 and %d", maxEventLimit))
			return
		}
		limit = n
	}
	s, err := l.m.Get(r.Context(), caller(r), r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var all []LifecycleEvent
	for _, name := range lifecycleStreams {
		evs, err := l.read(r.Context(), name, s.ID, s.CreatedAt.Add(-eventClockSkew), limit)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		all = append(all, evs...)
	}
	slices.SortStableFunc(all, func(a, b LifecycleEvent) int {
		return cmp.Or(b.OccurredAt.Compare(a.OccurredAt), strings.Compare(b.ID, a.ID))
	})
	all = append([]LifecycleEvent{}, all[:min(len(all), limit)]...)
	httpx.WriteJSON(w, http.StatusOK, all)
}

// read scans one stream from start to its current end and returns the
// last limit events about the service.
func (l *Live) read(ctx context.Context, name, serviceID string, start time.Time, limit int) ([]LifecycleEvent, error) {
	st, err := l.streams.Stream(ctx, name)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "open stream %s", name)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "read stream %s", name)
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 || info.State.LastTime.Before(start) {
		return nil, nil
	}
	// Message by message, without a consumer: the deployer may read the
	// streams, not create consumers on them.
	r, err := natsx.NewStreamReader(ctx, st, start)
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "read stream %s", name)
	}
	var out []LifecycleEvent
	for {
		msg, err := r.Next(ctx)
		if errors.Is(err, natsx.ErrCaughtUp) {
			return out, nil // the rest aged out of the stream meanwhile
		}
		if err != nil {
			return nil, errs.Wrap(errs.Unavailable, err, "read stream %s", name)
		}
		if ev, ok := lifecycleEvent(msg.Subject, msg.Data, serviceID); ok {
			out = append(out, ev)
			if len(out) > limit {
				out = out[1:]
			}
		}
		if msg.Sequence >= last {
			return out, nil
		}
	}
}

// eventFields are the fields lifecycle events share; each event type has
// some of them.
type eventFields struct {
	events.Meta
	ServiceID     string `json:"service_id"`
	InstanceID    string `json:"instance_id"`
	WorkerID      string `json:"worker_id"`
	BaseModel     string `json:"base_model"`
	Task          string `json:"task"`
	Engine        string `json:"engine"`
	Instances     *int   `json:"instances"`
	BillingMethod string `json:"billing_method"`
	From          *int   `json:"from_instances"`
	To            *int   `json:"to_instances"`
	Reason        string `json:"reason"`
	ExitCode      *int   `json:"exit_code"`
	Restarts      int    `json:"restarts"`
}

// lifecycleEvent decodes a message and describes it when it is about the
// service. Event types it does not know get a message from their subject
// and the shared fields, so new events show up without a change here.
func lifecycleEvent(subject string, data []byte, serviceID string) (LifecycleEvent, bool) {
	var f eventFields
	if err := json.Unmarshal(data, &f); err != nil || f.ServiceID != serviceID {
		return LifecycleEvent{}, false
	}
	typ := subject
	for _, prefix := range []string{events.SubjectInstancePlacedV1, events.SubjectInstanceReleasedV1} {
		if strings.HasPrefix(subject, prefix+".") {
			typ = prefix
		}
	}
	inst := ""
	if f.InstanceID != "" {
		inst = "instance " + shortID(f.InstanceID)
	}
	var msg string
	switch typ {
	case events.SubjectServiceCreatedV1:
		msg = fmt.Sprintf("created: %s for %s on %s, %d instance(s), billed %s", f.BaseModel, f.Task, f.Engine, deref(f.Instances), f.BillingMethod)
	case events.SubjectServiceDeletedV1:
		msg = "deletion requested"
	case events.SubjectServiceScaledV1:
		msg = fmt.Sprintf("scaled from %d to %d instance(s)", deref(f.From), deref(f.To))
	case events.SubjectInstancePlacedV1:
		msg = fmt.Sprintf("%s placed on worker %s", inst, f.WorkerID)
	case events.SubjectInstanceReadyV1:
		msg = fmt.Sprintf("%s ready on %s", inst, f.Engine)
	case events.SubjectInstanceStoppedV1:
		msg = inst + " stopped"
	case events.SubjectInstanceReleasedV1:
		msg = inst + " released"
	case events.SubjectInstanceFailedV1:
		msg = fmt.Sprintf("%s failed (exit code %d after %d restarts)", inst, deref(f.ExitCode), f.Restarts)
	default:
		// e.g. "scale.service.autoscaled.v1" reads "service autoscaled".
		parts := strings.Split(typ, ".")
		if len(parts) >= 3 {
			msg = parts[len(parts)-3] + " " + parts[len(parts)-2]
		} else {
			msg = typ
		}
		if inst != "" {
			msg = inst + ": " + msg
		}
		if f.From != nil && f.To != nil {
			msg += fmt.Sprintf(" from %d to %d instance(s)", *f.From, *f.To)
		}
	}
	if f.Reason != "" {
		msg += ": " + f.Reason
	}
	return LifecycleEvent{ID: f.ID, Type: typ, OccurredAt: f.OccurredAt, InstanceID: f.InstanceID, Message: msg}, true
}

// shortID is the first block of a UUID, enough to tell instances apart.
func shortID(id string) string {
	if i := strings.IndexByte(id, '-'); i > 0 {
		return id[:i]
	}
	return id
}

func deref(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}
