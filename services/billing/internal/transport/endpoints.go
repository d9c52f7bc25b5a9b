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

// Endpoints are the usage API as go-kit endpoints, free of HTTP: the
// usage endpoint serves both the JSON answer and the CSV export, which
// differ only in their encoders.
type Endpoints struct {
	Usage       endpoint.Endpoint // billing.Query → billing.Usage
	DeadLetters endpoint.Endpoint // nothing → DeadLetterReport, admins only
}

// MakeEndpoints returns the endpoints of svc and dead, each wrapped in
// instrument. The caller's API key comes from the context.
func MakeEndpoints(svc *billing.Service, dead *DeadLetters) Endpoints {
	return Endpoints{
		Usage: instrument("usage")(func(ctx context.Context, req any) (any, error) {
			k, _ := auth.FromContext(ctx)
			return svc.Usage(ctx, k, req.(billing.Query))
		}),
		DeadLetters: instrument("deadletters")(func(ctx context.Context, _ any) (any, error) {
			if k, _ := auth.FromContext(ctx); !k.Admin {
				return nil, errs.E(errs.Forbidden, "only admins may read dead letters")
			}
			return dead.Report(ctx, Durables, DeadLetterLimit)
		}),
	}
}

// apiDuration times the usage API's endpoints, whatever carries them.
var apiDuration = func() metric.Float64Histogram {
	h, _ := otel.Meter("github.com/modelport/modelport/services/billing").Float64Histogram("modelport.billing.api.duration",
		metric.WithUnit("s"), metric.WithDescription("Time to answer a usage API call (ClickHouse queries included), by endpoint and error kind."))
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
