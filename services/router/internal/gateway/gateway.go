// Package gateway is the router's domain: it checks an OpenAI request
// against the caller and the service it names, forwards it to a ready
// instance, and meters the answer, exactly once per request.
package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/routing"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

const tracerName = "github.com/modelport/modelport/services/router/gateway"

// Engine sends a request to an instance's OpenAI base URL and returns the
// answer's status and body once its headers are in; the caller closes the
// body. sent, when not nil, is called once the whole body has been written
// to the engine, when the router may let go of its bytes. A request that
// got no answer fails with an *EngineError.
type Engine interface {
	Open(ctx context.Context, endpoint, path string, body []byte, sent func()) (status int, resp io.ReadCloser, err error)
}

// EngineError is a request to an engine that got no answer. Sent and
// Faulty are what the gateway decides by: only a request that provably
// never reached the engine is sent to another instance, since one that
// did may be running there (a query that crashes engines would take down
// a second one; a long generation would run twice); and only an instance
// at fault leaves the rotation, never one whose client went away.
type EngineError struct {
	// Sent reports that the whole request may have reached the engine.
	Sent bool
	// Faulty reports that the instance is at fault: it could not be
	// reached, did not answer in time, or dropped a fresh connection.
	Faulty bool
	// Err is the failure: an *errs.Error (Unavailable, Timeout, Upstream)
	// for the client, or the context's error when the request was
	// cancelled.
	Err error
}

func (e *EngineError) Error() string { return e.Err.Error() }
func (e *EngineError) Unwrap() error { return e.Err }

// Publisher publishes usage events.
type Publisher interface {
	Publish(ctx context.Context, ev events.Event) error
}

// Gateway handles OpenAI API calls. It is safe for concurrent use.
type Gateway struct {
	table  *routing.Table
	engine Engine
	pub    Publisher
	log    *slog.Logger
	demand *routing.Demand
	// ReadyWait bounds how long a request waits for a ready instance, as
	// when a service is still deploying.
	ReadyWait time.Duration
	// ColdStartWait bounds how long a request to an autoscaled service
	// waits for a ready instance, as when it was scaled to zero and the
	// request starts it again.
	ColdStartWait time.Duration
	// FailCooldown is how long an instance that failed stays out of rotation.
	FailCooldown time.Duration
	// Limits, when set, are the rate limits on calls to services.
	Limits Limiter
	// Images, when set, fetches the http(s) image URLs of chat requests,
	// which then reach the engine as data URLs; without it such URLs are
	// refused. Engines never fetch anything a client names.
	Images ImageFetcher
	// MaxImageBytes bounds each image of a chat request, inline or fetched.
	MaxImageBytes int64
	// MaxFetchedBytes bounds the images fetched for one request together,
	// as the body limit bounds inline ones; 0 means MaxImageBytes.
	MaxFetchedBytes int64
	// fetchSlots bounds the image fetches in flight across requests, and
	// those of each owner.
	fetchSlots *fetchSlots
	// Budget, when set, bounds the bytes of request bodies and fetched
	// images the router holds at once.
	Budget *Budget
	// IdleTimeout, when positive, ends an engine's answer that sends no
	// byte for that long once its headers are in: a stream ends with an
	// error event, is metered for what it produced, and the instance leaves
	// the rotation. It must allow for a long prompt's prefill.
	IdleTimeout time.Duration
	// ImageFetchTimeout bounds fetching all the image URLs of one request.
	ImageFetchTimeout time.Duration
	// Observer, when set, is told of every answered request and every
	// stream's first token, for metrics.
	Observer Observer
}

// Observer watches answered requests; the router's metrics implement it.
type Observer interface {
	// Answered is called once per request an engine answered, as it is
	// metered: its status, how long it took and its usage.
	Answered(svc state.Service, endpoint string, status int, elapsed time.Duration, u Usage)
	// FirstToken is called when a stream's first content reaches the
	// client, with the time since the request arrived.
	FirstToken(svc state.Service, ttft time.Duration)
	// Failed is called for a request to a service that got no answer to
	// meter: no ready instance, an engine unreachable or answering an
	// error.
	Failed(svc state.Service, endpoint string, err error, elapsed time.Duration)
}

// observeFailure tells the Observer, if any, of a request that failed.
func (g *Gateway) observeFailure(svc state.Service, endpoint string, err error, started time.Time) {
	if g.Observer != nil && err != nil {
		g.Observer.Failed(svc, endpoint, err, time.Since(started))
	}
}

// Limiter is the rate limits on calls to services, per API key and per
// service; *ratelimit.Limiter implements it.
type Limiter interface {
	// Admit returns nil, or an errs.RateLimited error with RetryAfter when
	// the key or the service has spent its budget.
	Admit(keyID, serviceID, accessName string) error
	// Charge takes the tokens a call used from the key's and the service's
	// budgets.
	Charge(keyID, serviceID string, tokens int)
}

// New returns a Gateway. It counts the requests it forwards in demand.
func New(table *routing.Table, demand *routing.Demand, engine Engine, pub Publisher, log *slog.Logger) *Gateway {
	return &Gateway{table: table, demand: demand, engine: engine, pub: pub, log: log,
		ReadyWait: 10 * time.Second, ColdStartWait: 2 * time.Minute, FailCooldown: 5 * time.Second,
		MaxImageBytes: DefaultMaxImageBytes, ImageFetchTimeout: 10 * time.Second,
		fetchSlots: newFetchSlots(maxConcurrentFetches, fetchesPerOwner)}
}

// admit applies the rate limits to a call to svc.
func (g *Gateway) admit(c Call, svc state.Service) error {
	if g.Limits == nil {
		return nil
	}
	return g.Limits.Admit(c.Caller.ID, svc.ID, svc.AccessName)
}

// Call is one API request as the gateway sees it.
type Call struct {
	Caller    auth.Key
	RequestID string
	Body      []byte
	// Hold, when set, holds Body's bytes in the gateway's Budget; the
	// gateway grows it by the images it fetches and releases it once the
	// request to the engine is written, or the call ends. Without one the
	// gateway takes one for Body.
	Hold *Hold
}

// hold gives c a hold on g.Budget for c.Body if it has none; the error is
// the budget's refusal.
func (g *Gateway) hold(c *Call) error {
	if c.Hold != nil {
		return nil
	}
	c.Hold = g.Budget.Hold()
	return c.Hold.Grow(int64(len(c.Body)))
}

// service resolves an access name for caller. Another owner's service is
// NotFound, not Forbidden, so names do not leak; so is a service being
// deleted, from the moment the deletion is accepted. A key restricted to
// some services gets Forbidden for its owner's other services.
func (g *Gateway) service(caller auth.Key, model string) (state.Service, error) {
	svc, ok := g.table.Resolve(model)
	gone := svc.Status == state.StatusDeleting || svc.Status == state.StatusDeleted
	if !ok || gone || (!caller.Admin && svc.OwnerID != caller.OwnerID) {
		return state.Service{}, &errs.Error{Kind: errs.NotFound, Param: "model", Msg: fmt.Sprintf("the model %q does not exist or you do not have access to it", model)}
	}
	if len(caller.Services) > 0 && !slices.Contains(caller.Services, svc.ID) {
		return state.Service{}, &errs.Error{Kind: errs.Forbidden, Param: "model", Msg: fmt.Sprintf("this API key may not call the model %q", model)}
	}
	return svc, nil
}

// upstream is an engine's answer being read; release frees the instance.
type upstream struct {
	status   int
	body     io.ReadCloser
	instance state.Instance
	release  func()
	fail     func() // takes the instance out of rotation
	// ctx is the engine request's; cancel ends it, with a cause.
	ctx    context.Context
	cancel context.CancelCauseFunc
}

func (u *upstream) close() {
	u.body.Close()
	if u.cancel != nil {
		u.cancel(nil)
	}
	u.release()
}

// Causes of an engine request ended by the router rather than by the
// engine.
var (
	errIdle       = errors.New("the engine sent nothing for too long")
	errClientGone = errors.New("the client went away")
)

// idled reports whether the engine request was ended for sending nothing
// for IdleTimeout.
func (u *upstream) idled() bool {
	return u.ctx != nil && errors.Is(context.Cause(u.ctx), errIdle)
}

// sentError is a request that reached an engine (which may have worked on
// it) and got no answer because its client went away: it is metered.
type sentError struct {
	instance state.Instance
	err      error
}

func (e *sentError) Error() string { return e.err.Error() }
func (e *sentError) Unwrap() error { return e.err }

// forward sends req to the ready instance the service's routing policy
// chooses for route, holding the request until one is ready for up to
// ReadyWait (ColdStartWait for an
// autoscaled service, which may be starting from zero). A request that
// provably never reached the instance (it could not be reached, or
// dropped the connection before the body was written), or that the engine
// itself refused as not started (503 with its error object), is tried once
// more on another instance; any other failure is the client's, and the
// request runs once. An instance at fault leaves the rotation for a
// while. sent is called once the body is written to the engine. The
// request counts in the service's demand until the upstream is closed.
func (g *Gateway) forward(ctx context.Context, svc state.Service, path string, req *payload, route routing.Request) (_ *upstream, err error) {
	finish := g.demand.Begin(svc.ID)
	defer func() {
		if err != nil {
			finish()
		}
	}()
	tm := TimingOf(ctx)
	var tried []string
	again := false // the instance tried may be tried again if it is the only one
	for {
		ep, release, err := g.pick(ctx, svc, route, tried, again)
		if err != nil {
			return nil, err
		}
		tm.Mark(StageRoute)
		engCtx, cancel := context.WithCancelCause(ctx)
		status, resp, err := g.engine.Open(engCtx, ep.Instance.Endpoint, path, req.bytes(), req.sent)
		tm.Mark(StageEngine)
		if err != nil {
			release()
			cancel(nil)
			ee, ok := err.(*EngineError)
			if !ok {
				ee = &EngineError{Sent: true, Err: err}
			}
			switch {
			case ctx.Err() != nil:
				if ee.Sent {
					return nil, &sentError{instance: ep.Instance, err: ctx.Err()}
				}
				return nil, ctx.Err()
			case ee.Faulty:
				ep.MarkFailed(g.FailCooldown)
			}
			if !ee.Sent && len(tried) == 0 {
				g.log.WarnContext(ctx, "instance not reached; trying another", "instance_id", ep.Instance.ID, "err", err)
				tried = append(tried, ep.Instance.ID)
				// A connection refused or dropped at once (a burst of new
				// connections, an engine restarting) may be tried again on
				// the same instance when there is no other; one that timed
				// out would only make the client wait twice as long.
				var t interface{ Timeout() bool }
				again = !(errors.As(err, &t) && t.Timeout())
				continue
			}
			if ee.Sent {
				g.log.WarnContext(ctx, "instance failed without answering; the request may have reached it, so it is not sent again",
					"instance_id", ep.Instance.ID, "err", err)
			}
			return nil, ee.Err
		}
		if status == 502 || status == 503 {
			b, _ := readLimited(resp, 64<<10)
			resp.Close()
			release()
			cancel(nil)
			ep.MarkFailed(g.FailCooldown)
			if status == 503 && notStarted(b) {
				if len(tried) == 0 {
					g.log.WarnContext(ctx, "engine refused the request; trying another instance", "instance_id", ep.Instance.ID, "status", status)
					tried = append(tried, ep.Instance.ID)
					continue
				}
				return nil, &errs.Error{Kind: errs.Unavailable, RetryAfter: time.Second,
					Msg: fmt.Sprintf("the instances of %s are busy or starting; retry shortly", svc.AccessName)}
			}
			return nil, engineError(status, b)
		}
		up := &upstream{status: status, body: resp, instance: ep.Instance, ctx: engCtx, cancel: cancel,
			release: func() { release(); finish() }, fail: func() { ep.MarkFailed(g.FailCooldown) }}
		if g.IdleTimeout > 0 {
			up.body = newIdleBody(resp, g.IdleTimeout, func() { cancel(errIdle) })
		}
		return up, nil
	}
}

// payload is the body of a request to an engine, held until it has been
// written, then let go of (and the bytes it held in the budget given
// back), even while the engine works on its answer: a non-streamed answer
// comes only once the whole generation is done.
type payload struct {
	mu      sync.Mutex
	b       []byte
	release func() // gives back what the request holds of the budget
}

func newPayload(b []byte, release func()) *payload { return &payload{b: b, release: release} }

// bytes returns the body, nil once it has been sent.
func (p *payload) bytes() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.b
}

// sent is the engine's callback once the body is written.
func (p *payload) sent() {
	p.mu.Lock()
	p.b = nil
	p.mu.Unlock()
	if p.release != nil {
		p.release()
	}
}

// pick returns an instance for route, a request to svc, chosen by the
// service's routing policy and not one of tried: on the first try holding
// the request until one is ready; on a retry another one now, else, when
// again, one of tried, else none.
func (g *Gateway) pick(ctx context.Context, svc state.Service, route routing.Request, tried []string, again bool) (*routing.Endpoint, func(), error) {
	unavailable := &errs.Error{Kind: errs.Unavailable, RetryAfter: time.Second,
		Msg: fmt.Sprintf("service %s has no ready instance (it is %s); retry shortly", svc.AccessName, svc.Status)}
	if len(tried) > 0 {
		ep, release, ok := g.table.Route(svc.ID, route, tried...)
		if !ok && again {
			ep, release, ok = g.table.Route(svc.ID, route)
		}
		if !ok {
			return nil, nil, unavailable
		}
		return ep, release, nil
	}
	wait := g.ReadyWait
	if svc.Autoscale != nil && svc.Status != state.StatusFailed {
		wait = max(wait, g.ColdStartWait) // it may be starting from zero; a failed one is not
	}
	waitCtx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	stopWaiting := func() {}
	defer func() { stopWaiting() }()
	ep, release, err := g.table.Acquire(waitCtx, svc.ID, route, func() {
		// The time held for an instance is a span of its own.
		_, span := otel.Tracer(tracerName).Start(ctx, "wait for a ready instance",
			trace.WithAttributes(attribute.String("modelport.service_id", svc.ID)))
		done := g.demand.Wait(svc.ID)
		stopWaiting = func() { done(); span.End() }
	})
	switch {
	case ctx.Err() != nil:
		return nil, nil, ctx.Err()
	case err != nil:
		return nil, nil, unavailable
	}
	return ep, release, nil
}

// notStarted reports whether an engine's 503 answer is its own refusal
// to start the request (loading, queue full): an OpenAI-style error
// object, {"error": ...}, which engines send and proxies in front of them
// do not. A proxy's 503 may come after the engine began.
func notStarted(body []byte) bool {
	var e struct {
		Error json.RawMessage `json:"error"`
	}
	return json.Unmarshal(body, &e) == nil && len(e.Error) > 0 && string(e.Error) != "null"
}

// idleBody is an engine's answer that ends the engine request, through
// expire, when a read waits d for a byte (and until the first read).
type idleBody struct {
	io.ReadCloser
	d     time.Duration
	timer *time.Timer
}

func newIdleBody(rc io.ReadCloser, d time.Duration, expire func()) *idleBody {
	return &idleBody{ReadCloser: rc, d: d, timer: time.AfterFunc(d, expire)}
}

// Read counts only the time spent waiting for the engine: a client slow
// to take the answer (the router blocked writing to it) is not the
// engine's silence.
func (b *idleBody) Read(p []byte) (int, error) {
	b.timer.Reset(b.d)
	n, err := b.ReadCloser.Read(p)
	b.timer.Stop()
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	return b.ReadCloser.Close()
}

// meter publishes the usage of one answered request and charges its
// tokens to the rate limits. Usage is recorded before the client has the
// whole answer, and the event ID makes a retried publish count once.
func (g *Gateway) meter(ctx context.Context, c Call, svc state.Service, inst state.Instance, endpoint string, status int, u Usage, started time.Time) error {
	tm, start := TimingOf(ctx), time.Now()
	u = u.billable()
	if g.Limits != nil {
		// The engine did the work whether or not the event is stored.
		g.Limits.Charge(c.Caller.ID, svc.ID, u.PromptTokens+u.CompletionTokens)
	}
	if g.Observer != nil {
		g.Observer.Answered(svc, endpoint, status, time.Since(started), u)
	}
	tm.Add(StageMetrics, start)
	start = time.Now()
	defer tm.Add(StagePublish, start)
	ev := events.RequestCompletedV1{
		Meta: events.NewMeta(), RequestID: c.RequestID, ServiceID: svc.ID, OwnerID: svc.OwnerID,
		AccessName: svc.AccessName, BaseModel: svc.BaseModel, APIKeyID: c.Caller.ID, InstanceID: inst.ID,
		Endpoint: endpoint, Status: status,
		PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens, TotalTokens: u.PromptTokens + u.CompletionTokens,
		CachedTokens: u.PromptTokensDetails.CachedTokens,
		StartedAt:    started, FinishedAt: time.Now().UTC(),
	}
	if err := g.pub.Publish(context.WithoutCancel(ctx), ev); err != nil {
		g.log.ErrorContext(ctx, "usage event not recorded", "request_id", c.RequestID, "service_id", svc.ID, "err", err)
		return errs.Wrap(errs.Unavailable, err, "the usage of this request could not be recorded, so its answer is withheld; retry it (in the rare case the record was stored after all, this request is billed once)")
	}
	return nil
}

// Usage is the OpenAI usage object of a chat completion.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
	// PromptTokensDetails.CachedTokens is how many prompt tokens the
	// engine found in its prefix cache, where it says; left out of the
	// JSON when none.
	PromptTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details,omitzero"`
}

// billable returns u as it is metered: an engine's cached count is at
// most its prompt, and never negative.
func (u Usage) billable() Usage {
	u.PromptTokensDetails.CachedTokens = min(max(u.PromptTokensDetails.CachedTokens, 0), u.PromptTokens)
	return u
}

// Models lists the services caller may call, as OpenAI model objects.
func (g *Gateway) Models(caller auth.Key) []Model {
	out := []Model{}
	for _, s := range g.table.Services() {
		if s.Status == state.StatusDeleting || s.Status == state.StatusDeleted {
			continue
		}
		if caller.Reaches(s.OwnerID, s.ID) {
			out = append(out, modelOf(s))
		}
	}
	slices.SortFunc(out, func(a, b Model) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Model returns one service caller may call, or NotFound.
func (g *Gateway) Model(caller auth.Key, id string) (Model, error) {
	svc, err := g.service(caller, id)
	if err != nil {
		return Model{}, err
	}
	return modelOf(svc), nil
}

func modelOf(s state.Service) Model {
	return Model{ID: s.AccessName, Object: "model", Created: s.CreatedAt.Unix(), OwnedBy: "u-" + s.OwnerID,
		BaseModel: s.BaseModel, Task: s.Task, Engine: s.Engine}
}

// Model is the OpenAI model object, with what Modelport adds: the base
// model, the task, and the engine serving it ("simulator" where no real
// engine runs).
type Model struct {
	ID        string `json:"id"`
	Object    string `json:"object"`
	Created   int64  `json:"created"`
	OwnedBy   string `json:"owned_by"`
	BaseModel string `json:"base_model"`
	Task      string `json:"task"`
	Engine    string `json:"engine"`
}
