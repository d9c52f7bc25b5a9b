package clickhouse

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/events"
)

// BenchmarkInsertUsage stores batches of 500 fresh usage events, the
// consumer's default batch, in one run, two ways: the duplicate lookup and
// the insert, which is all billing did before the exact rollup, and
// InsertUsage as it is, which also notes the hours before the current one
// for the rollup; each with current usage (the usual case: nothing to
// note) and with usage spread over the last two hours (a note for the past
// hour). Each starts on an empty database of its own, so none pays for
// another's rows.
func BenchmarkInsertUsage(b *testing.B) {
	ctx := context.Background()
	fresh := func(b *testing.B) *Store {
		addr, db := chtest.New(b)
		s, err := Open(addr, db)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		if err := s.Migrate(ctx); err != nil {
			b.Fatal(err)
		}
		return s
	}
	batch := func(i int, span time.Duration) []events.RequestCompletedV1 {
		out := make([]events.RequestCompletedV1, 500)
		now := time.Now().UTC()
		for j := range out {
			m := events.NewMeta()
			m.OccurredAt = now.Add(-time.Duration(j) * span / 500).Truncate(time.Second)
			out[j] = events.RequestCompletedV1{Meta: m, RequestID: "r", ServiceID: fmt.Sprintf("svc-%d", j%20), OwnerID: "o",
				AccessName: "u-o/x", BaseModel: "qwen2.5-7b-instruct", APIKeyID: "k", InstanceID: "i", Endpoint: "/v1/chat/completions",
				Status: 200, PromptTokens: 100 + i, CompletionTokens: 20, TotalTokens: 120 + i, StartedAt: m.OccurredAt, FinishedAt: m.OccurredAt}
		}
		return out
	}
	lookupInsert := func(s *Store, evs []events.RequestCompletedV1) error {
		fresh, err := s.unstoredUsage(ctx, evs)
		if err != nil {
			return err
		}
		return s.insertUsage(ctx, fresh)
	}
	insertUsage := func(s *Store, evs []events.RequestCompletedV1) error { return s.InsertUsage(ctx, evs) }
	for _, v := range []struct {
		name  string
		span  time.Duration
		store func(*Store, []events.RequestCompletedV1) error
	}{
		{"current/lookup+insert", time.Second, lookupInsert},
		{"current/InsertUsage", time.Second, insertUsage},
		{"last-two-hours/lookup+insert", 2 * time.Hour, lookupInsert},
		{"last-two-hours/InsertUsage", 2 * time.Hour, insertUsage},
	} {
		b.Run(v.name, func(b *testing.B) {
			s := fresh(b)
			batches := make([][]events.RequestCompletedV1, b.N)
			for i := range batches {
				batches[i] = batch(i, v.span)
			}
			b.ResetTimer()
			for i := range b.N {
				if err := v.store(s, batches[i]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*500)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
