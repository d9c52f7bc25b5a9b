package clickhouse

import (
	"context"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// instruments are billing's ClickHouse metrics, served on /metrics.
var instruments = sync.OnceValue(func() (m struct {
	duration metric.Float64Histogram
	rows     metric.Int64Counter
}) {
	meter := otel.Meter("github.com/modelport/modelport/services/billing/clickhouse")
	m.duration, _ = meter.Float64Histogram("modelport.clickhouse.insert.duration", metric.WithUnit("s"),
		metric.WithDescription("Time to send one batch to ClickHouse, by table and outcome (ok or failed)."))
	m.rows, _ = meter.Int64Counter("modelport.clickhouse.insert.rows",
		metric.WithDescription("Rows sent to ClickHouse, by table and outcome (ok or failed)."))
	return m
})

// send sends a prepared batch of n rows into table and records how long it
// took and whether it failed.
func send(ctx context.Context, b driver.Batch, table string, n int) error {
	start := time.Now()
	err := b.Send()
	outcome := "ok"
	if err != nil {
		outcome = "failed"
	}
	attrs := metric.WithAttributes(attribute.String("table", table), attribute.String("outcome", outcome))
	m := instruments()
	m.duration.Record(ctx, time.Since(start).Seconds(), attrs)
	m.rows.Add(ctx, int64(n), attrs)
	return err
}
