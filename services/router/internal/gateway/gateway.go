// Package gateway is the router's domain: it checks an OpenAI request
// against the caller and the service it names, forwards it to a ready
// instance, and meters the answer, exactly once per request.
package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
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

// Engine sends a request to an instance's OpenAI base URL. A failure
// before any answer (refused, reset) is errs.Unavailable, so the gateway
// may try another instance; no answer in time is errs.Timeout. The caller
// closes the returned body.
type Engine interface {
	Open(ctx context.Context, endpoint, path string, body []byte) (status int, resp io.ReadCloser, err error)
}

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
	// fetchSlots bounds the image fetches in flight across requests.
	fetchSlots chan struct{}
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
		fetchSlots: make(chan struct{}, maxConcurrentFetches)}
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
}

func (u *upstream) close() {
	u.body.Close()
	u.release()
}

// forward sends body to the ready instance the service's routing policy
// chooses for route, waiting up to
// ReadyWait for one (ColdStartWait for an autoscaled service, which may be
// starting from zero). An instance that cannot be reached, or answers 502
// or 503 before any byte reached the client, is taken out of rotation for
// a while and the request is tried once more on another instance. The
// request counts in the service's demand until the upstream is closed.
func (g *Gateway) forward(ctx context.Context, svc state.Service, path string, body []byte, route routing.Request) (_ *upstream, err error) {
	finish := g.demand.Begin(svc.ID)
	defer func() {
		if err != nil {
			finish()
		}
	}()
	waiting, stopWaiting := false, func() {}
	defer func() { stopWaiting() }()
	var tried []string
	wait := g.ReadyWait
	if svc.Autoscale != nil && svc.Status != state.StatusFailed {
		wait = max(wait, g.ColdStartWait) // it may be starting from zero; a failed one is not
	}
	deadline := time.Now().Add(wait)
	for {
		ep, release, ok := g.table.Route(svc.ID, route, tried...)
		if !ok {
			if len(tried) > 0 || time.Now().After(deadline) {
				return nil, &errs.Error{Kind: errs.Unavailable, RetryAfter: time.Second,
					Msg: fmt.Sprintf("service %s has no ready instance (it is %s); retry shortly", svc.AccessName, svc.Status)}
			}
			if !waiting {
				// The time held for an instance is a span of its own.
				_, span := otel.Tracer(tracerName).Start(ctx, "wait for a ready instance",
					trace.WithAttributes(attribute.String("modelport.service_id", svc.ID)))
				done := g.demand.Wait(svc.ID)
				waiting, stopWaiting = true, func() { done(); span.End() }
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(20 * time.Millisecond):
				continue
			}
		}
		status, resp, err := g.engine.Open(ctx, ep.Instance.Endpoint, path, body)
		retry := errs.KindOf(err) == errs.Unavailable || err == nil && (status == 502 || status == 503)
		if retry && ctx.Err() == nil {
			if resp != nil {
				resp.Close()
			}
			release()
			ep.MarkFailed(g.FailCooldown)
			if len(tried) == 0 {
				g.log.WarnContext(ctx, "instance failed before answering; trying another", "instance_id", ep.Instance.ID, "status", status, "err", err)
				tried = append(tried, ep.Instance.ID)
				continue
			}
			if err == nil {
				return nil, errs.E(errs.Upstream, "engine failed with status %d", status)
			}
			return nil, err
		}
		if err != nil {
			release()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		cooldown := g.FailCooldown
		return &upstream{status: status, body: resp, instance: ep.Instance, release: func() { release(); finish() },
			fail: func() { ep.MarkFailed(cooldown) }}, nil
	}
}

// meter publishes the usage of one answered request and charges its
// tokens to the rate limits. Usage is recorded before the client has the
// whole answer, and the event ID makes a retried publish count once.
func (g *Gateway) meter(ctx context.Context, c Call, svc state.Service, inst state.Instance, endpoint string, status int, u Usage, started time.Time) error {
	if g.Limits != nil {
		// The engine did the work whether or not the event is stored.
		g.Limits.Charge(c.Caller.ID, svc.ID, u.PromptTokens+u.CompletionTokens)
	}
	if g.Observer != nil {
		g.Observer.Answered(svc, endpoint, status, time.Since(started), u)
	}
	ev := events.RequestCompletedV1{
		Meta: events.NewMeta(), RequestID: c.RequestID, ServiceID: svc.ID, OwnerID: svc.OwnerID,
		AccessName: svc.AccessName, BaseModel: svc.BaseModel, APIKeyID: c.Caller.ID, InstanceID: inst.ID,
		Endpoint: endpoint, Status: status,
		PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens, TotalTokens: u.PromptTokens + u.CompletionTokens,
		CachedTokens: min(max(u.PromptTokensDetails.CachedTokens, 0), u.PromptTokens),
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
	// engine found in its prefix cache, where it says.
	PromptTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
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
