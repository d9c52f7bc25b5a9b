package transport

import (
	"context"
	"time"

	"github.com/go-kit/kit/endpoint"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/billing/internal/billing"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Endpoints are billing's API as go-kit endpoints, free of HTTP: the
// usage and statements endpoints each serve a JSON answer and a CSV
// export, which differ only in their encoders.
type Endpoints struct {
	Usage        endpoint.Endpoint // billing.Query → billing.Usage
	DeadLetters  endpoint.Endpoint // nothing → DeadLetterReport, admins only
	Statements   endpoint.Endpoint // billing.Period → billing.Statements
	Periods      endpoint.Endpoint // nothing → closingList
	ClosePeriod  endpoint.Endpoint // billing.Period → billing.Closing, admins only
	Prices       endpoint.Endpoint // nothing → priceSchedule
	ChangePrices endpoint.Endpoint // []billing.PriceEntry → priceSchedule, admins only
}

// MaxReads is how many usage and statement reads one billing process
// serves at once; more wait for a slot, up to ReadQueueWait.
const MaxReads = 8

// ReadQueueWait is how long a read waits for a slot before it is turned
// away with 429.
const ReadQueueWait = 10 * time.Second

// MakeEndpoints returns the endpoints of svc and dead, each wrapped in
// instrument, the reads also in a bound on how many run at once. The
// caller's API key comes from the context.
func MakeEndpoints(svc *billing.Service, dead *DeadLetters) Endpoints {
	reads := bounded(MaxReads, ReadQueueWait)
	caller := func(ctx context.Context) auth.Key { k, _ := auth.FromContext(ctx); return k }
	schedule := func(sch *billing.Schedule, err error) (any, error) {
		if err != nil {
			return nil, err
		}
		return priceSchedule{Revision: sch.Revision(), Currency: billing.Currency, Data: sch.Entries()}, nil
	}
	return Endpoints{
		Usage: instrument("usage")(reads(func(ctx context.Context, req any) (any, error) {
			return svc.Usage(ctx, caller(ctx), req.(billing.Query))
		})),
		DeadLetters: instrument("deadletters")(func(ctx context.Context, _ any) (any, error) {
			if !caller(ctx).Admin {
				return nil, errs.E(errs.Forbidden, "only admins may read dead letters")
			}
			return dead.Report(ctx, Durables, DeadLetterLimit)
		}),
		Statements: instrument("statements")(reads(func(ctx context.Context, req any) (any, error) {
			return svc.Statements(ctx, caller(ctx), req.(billing.Period))
		})),
		Periods: instrument("periods")(func(ctx context.Context, _ any) (any, error) {
			cs, err := svc.Closings(ctx)
			if cs == nil {
				cs = []billing.Closing{}
			}
			return closingList{Data: cs}, err
		}),
		ClosePeriod: instrument("close_period")(func(ctx context.Context, req any) (any, error) {
			return svc.ClosePeriod(ctx, caller(ctx), req.(billing.Period))
		}),
		Prices: instrument("prices")(func(ctx context.Context, _ any) (any, error) {
			return schedule(svc.Prices(ctx))
		}),
		ChangePrices: instrument("change_prices")(func(ctx context.Context, req any) (any, error) {
			return schedule(svc.ChangePrices(ctx, caller(ctx), req.([]billing.PriceEntry)))
		}),
	}
}

// bounded is endpoint middleware letting at most n calls run at once; a
// call that finds no slot within wait is RateLimited.
func bounded(n int, wait time.Duration) endpoint.Middleware {
	slots := make(chan struct{}, n)
	return func(next endpoint.Endpoint) endpoint.Endpoint {
		return func(ctx context.Context, req any) (any, error) {
			t := time.NewTimer(wait)
			defer t.Stop()
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return nil, errs.Wrap(errs.Unavailable, ctx.Err(), "waiting for a read slot")
			case <-t.C:
				e := &errs.Error{Kind: errs.RateLimited, Msg: "billing is answering as many usage reads as it serves at once; try again shortly", RetryAfter: time.Second}
				return nil, e
			}
			defer func() { <-slots }()
			return next(ctx, req)
		}
	}
}

// apiDuration times the API's endpoints, whatever carries them.
var apiDuration = func() metric.Float64Histogram {
	h, _ := otel.Meter("github.com/modelport/modelport/services/billing").Float64Histogram("modelport.billing.api.duration",
		metric.WithUnit("s"), metric.WithDescription("Time to answer a billing API call (ClickHouse queries included), by endpoint and error kind."))
	return h
}()

// instrument is endpoint middleware recording each call's duration and
// the kind of its error, if any.
func instrument(name string) endpoint.Middleware {
	return func(next endpoint.Endpoint) endpoint.Endpoint {
		return func(ctx context.Context, req any) (any, error) {
			start := time.Now()
			resp, err := next(ctx, req)
			kind := "none"
			if err != nil {
				kind = errs.KindOf(err).String()
			}
			apiDuration.Record(ctx, time.Since(start).Seconds(),
				metric.WithAttributes(attribute.String("endpoint", name), attribute.String("error", kind)))
			return resp, err
		}
	}
}
