package transport

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/modelport/modelport/services/router/internal/routing"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metrics records the router's metrics with the global meter provider,
// served on /metrics: per model service, the latency of requests that
// reached it, by status (engine errors and no ready instance included), time to first token, tokens, output tokens per second, and,
// observed at each scrape, requests in flight per instance and requests
// waiting for an instance.
type Metrics struct {
	duration  metric.Float64Histogram
	ttft      metric.Float64Histogram
	tokens    metric.Int64Counter
	tokenRate metric.Float64Histogram
	observe   metric.Registration
	attrs     attrCache
}

// Close stops observing the routing table and demand.
func (m *Metrics) Close() { _ = m.observe.Unregister() }

var _ gateway.Observer = (*Metrics)(nil)

// NewMetrics creates the router's instruments; table, demand and budget
// (which may be nil) are read at each scrape.
func NewMetrics(table *routing.Table, demand *routing.Demand, budget *gateway.Budget) (*Metrics, error) {
	meter := otel.Meter("github.com/modelport/modelport/services/router")
	m := &Metrics{}
	var err error
	if m.duration, err = meter.Float64Histogram("modelport.router.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from a request's arrival to its metered end, per model service, endpoint and status.")); err != nil {
		return nil, err
	}
	if m.ttft, err = meter.Float64Histogram("modelport.router.time_to_first_token", metric.WithUnit("s"),
		metric.WithDescription("Time from a streaming request's arrival to its first content sent to the client.")); err != nil {
		return nil, err
	}
	if m.tokens, err = meter.Int64Counter("modelport.router.tokens",
		metric.WithDescription("Tokens metered, per model service and type: prompt, completion, and cached_prompt (the prompt tokens the engine found in its prefix cache).")); err != nil {
		return nil, err
	}
	if m.tokenRate, err = meter.Float64Histogram("modelport.router.output_tokens_per_second",
		metric.WithDescription("Completion tokens per second of each answered request."),
		metric.WithExplicitBucketBoundaries(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)); err != nil {
		return nil, err
	}
	inFlight, err := meter.Int64ObservableGauge("modelport.router.instance.in_flight",
		metric.WithDescription("Requests this router has in flight to each ready instance."))
	if err != nil {
		return nil, err
	}
	waiting, err := meter.Int64ObservableGauge("modelport.router.queue.waiting",
		metric.WithDescription("Requests this router holds waiting for a ready instance (as while a service starts from zero), per service."))
	if err != nil {
		return nil, err
	}
	held, err := meter.Int64ObservableGauge("modelport.router.request_memory.used", metric.WithUnit("By"),
		metric.WithDescription("Bytes of request bodies and fetched images the router holds now, of its MODELPORT_REQUEST_MEMORY budget."))
	if err != nil {
		return nil, err
	}
	m.observe, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(held, budget.Used())
		for _, l := range table.Loads() {
			o.ObserveInt64(inFlight, l.Outstanding, metric.WithAttributes(model(l.Service), attribute.String("instance_id", l.InstanceID)))
		}
		for _, d := range demand.Current() {
			o.ObserveInt64(waiting, int64(d.Waiting), metric.WithAttributes(attribute.String("service_id", d.ServiceID)))
		}
		return nil
	}, inFlight, waiting, held)
	if err != nil {
		return nil, err
	}
	return m, nil
}

func model(svc state.Service) attribute.KeyValue { return attribute.String("model", svc.AccessName) }

// Answered implements gateway.Observer.
func (m *Metrics) Answered(svc state.Service, endpoint string, status int, elapsed time.Duration, u gateway.Usage) {
	ctx := context.Background()
	a := m.attrs.service(svc.AccessName)
	m.duration.Record(ctx, elapsed.Seconds(), a.status(endpoint, status)...)
	m.tokens.Add(ctx, int64(u.PromptTokens), a.prompt...)
	m.tokens.Add(ctx, int64(u.CompletionTokens), a.completion...)
	m.tokens.Add(ctx, int64(u.PromptTokensDetails.CachedTokens), a.cached...)
	if elapsed > 0 && u.CompletionTokens > 0 {
		m.tokenRate.Record(ctx, float64(u.CompletionTokens)/elapsed.Seconds(), a.model...)
	}
}

// Failed implements gateway.Observer: the request's latency under the
// status its client gets, 499 for a client that went away.
func (m *Metrics) Failed(svc state.Service, endpoint string, err error, elapsed time.Duration) {
	status := httpx.Status(err)
	if errors.Is(err, context.Canceled) {
		status = 499
	}
	m.duration.Record(context.Background(), elapsed.Seconds(), m.attrs.service(svc.AccessName).status(endpoint, status)...)
}

// FirstToken implements gateway.Observer.
func (m *Metrics) FirstToken(svc state.Service, ttft time.Duration) {
	m.ttft.Record(context.Background(), ttft.Seconds(), m.attrs.service(svc.AccessName).model...)
}

// Bounds on the attribute sets kept: the services (by access name) and,
// per service, the endpoint and status pairs. Past them the cache starts
// over, so names of renamed and deleted services cannot pile up.
const (
	maxCachedServices = 4096
	maxCachedStatuses = 256
)

// attrCache keeps the attribute sets the router records with, built and
// sorted once per service rather than at every record. Safe for
// concurrent use.
type attrCache struct {
	mu       sync.RWMutex
	services map[string]*serviceAttrs
}

// serviceAttrs are the options that record one service's measurements.
type serviceAttrs struct {
	model                      []metric.RecordOption // model
	prompt, completion, cached []metric.AddOption    // model and type

	name     string
	mu       sync.RWMutex
	statuses map[endpointStatus][]metric.RecordOption // model, endpoint and status
}

type endpointStatus struct {
	endpoint string
	status   int
}

// service returns the attributes of the service with the access name.
func (c *attrCache) service(name string) *serviceAttrs {
	c.mu.RLock()
	a := c.services[name]
	c.mu.RUnlock()
	if a != nil {
		return a
	}
	a = newServiceAttrs(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.services[name]; old != nil {
		return old
	}
	if c.services == nil || len(c.services) >= maxCachedServices {
		c.services = make(map[string]*serviceAttrs)
	}
	c.services[name] = a
	return a
}

func newServiceAttrs(name string) *serviceAttrs {
	m := attribute.String("model", name)
	tokens := func(typ string) []metric.AddOption {
		return []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(m, attribute.String("type", typ)))}
	}
	return &serviceAttrs{
		name:       name,
		model:      []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(m))},
		prompt:     tokens("prompt"),
		completion: tokens("completion"),
		cached:     tokens("cached_prompt"),
	}
}

// status returns the options that record a request to endpoint that
// ended with status.
func (a *serviceAttrs) status(endpoint string, status int) []metric.RecordOption {
	k := endpointStatus{endpoint, status}
	a.mu.RLock()
	opts := a.statuses[k]
	a.mu.RUnlock()
	if opts != nil {
		return opts
	}
	opts = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("model", a.name),
		attribute.String("endpoint", endpoint), attribute.String("status", strconv.Itoa(status))))}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.statuses == nil || len(a.statuses) >= maxCachedStatuses {
		a.statuses = make(map[endpointStatus][]metric.RecordOption)
	}
	a.statuses[k] = opts
	return opts
}
