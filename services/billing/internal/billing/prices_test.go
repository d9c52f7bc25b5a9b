package billing_test

import (
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

func TestDefaultPricesCoverTheCatalog(t *testing.T) {
	list := billing.DefaultPriceList()
	listed := map[[2]string]bool{}
	for _, pr := range list {
		listed[[2]string{pr.BaseModel, pr.BillingMethod}] = true
	}
	for _, m := range catalog.Default().Models() {
		for _, method := range []string{state.BillingPerToken, state.BillingPerInstanceHour} {
			if !listed[[2]string{m.Name, method}] {
				t.Errorf("catalog model %s has no %s price of its own", m.Name, method)
			}
		}
	}
	for _, pr := range list {
		if !pr.ValidFrom.Equal(billing.Epoch) {
			t.Errorf("%s %s: the built-in list's prices apply from %s, want from 1970", pr.BaseModel, pr.BillingMethod, pr.ValidFrom)
		}
		if pr.BillingMethod == state.BillingPerToken && (pr.InputMicrosPerMTok == 0 || pr.OutputMicrosPerMTok == 0) {
			t.Errorf("%s per-token is free", pr.BaseModel)
		}
		if pr.BillingMethod == state.BillingPerInstanceHour && pr.InstanceHourMicros == 0 {
			t.Errorf("%s per-instance-hour is free", pr.BaseModel)
		}
	}
}

func TestParsePriceListRejects(t *testing.T) {
	anyRows := `{"base_model":"*","billing_method":"per-token","input_micros_per_mtok":1,"output_micros_per_mtok":1},
		{"base_model":"*","billing_method":"per-instance-hour","instance_hour_micros":1}`
	tests := []struct{ name, list string }{
		{"not json", `{`},
		{"no fallback", `[{"base_model":"m","billing_method":"per-token","input_micros_per_mtok":1}]`},
		{"duplicate", `[` + anyRows + `,{"base_model":"m","billing_method":"per-token"},{"base_model":"m","billing_method":"per-token"}]`},
		{"unknown method", `[` + anyRows + `,{"base_model":"m","billing_method":"per-request"}]`},
		{"no model", `[` + anyRows + `,{"billing_method":"per-token"}]`},
		{"hour price on per-token", `[` + anyRows + `,{"base_model":"m","billing_method":"per-token","instance_hour_micros":5}]`},
		{"token price on per-instance-hour", `[` + anyRows + `,{"base_model":"m","billing_method":"per-instance-hour","input_micros_per_mtok":5}]`},
		{"negative", `[` + anyRows + `,{"base_model":"m","billing_method":"per-token","input_micros_per_mtok":-5}]`},
		{"unknown field", `[` + anyRows + `,{"base_model":"m","billing_method":"per-token","valid_until":"2026-01-01T00:00:00Z"}]`},
		{"not a whole hour", `[` + anyRows + `,{"base_model":"m","billing_method":"per-token","valid_from":"2026-01-01T00:30:00Z"}]`},
		{"the fallback only later", `[{"base_model":"*","billing_method":"per-token","valid_from":"2026-01-01T00:00:00Z"},{"base_model":"*","billing_method":"per-instance-hour","instance_hour_micros":1}]`},
		{"fallback dropped", `[` + anyRows + `,{"base_model":"*","billing_method":"per-token","valid_from":"2026-01-01T00:00:00Z","dropped":true}]`},
		{"dropped with a price", `[` + anyRows + `,{"base_model":"m","billing_method":"per-token","valid_from":"2026-01-01T00:00:00Z","dropped":true,"input_micros_per_mtok":3}]`},
		{"two prices from one hour", `[` + anyRows + `,{"base_model":"m","billing_method":"per-token","input_micros_per_mtok":1},{"base_model":"m","billing_method":"per-token","input_micros_per_mtok":2}]`},
		{"not a model name", `[` + anyRows + `,{"base_model":"m'; DROP","billing_method":"per-token"}]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := billing.ParsePriceList([]byte(tc.list)); err == nil {
				t.Error("ParsePriceList succeeded")
			}
		})
	}
}

// entry is a price entry for tests: input and output micros for a
// per-token method, the first of them an hour's for per-instance-hour.
func entry(model, method string, from time.Time, a, b uint64) billing.PriceEntry {
	e := billing.PriceEntry{Price: billing.Price{BaseModel: model, BillingMethod: method}, ValidFrom: from}
	if method == state.BillingPerToken {
		e.InputMicrosPerMTok, e.OutputMicrosPerMTok = a, b
	} else {
		e.InstanceHourMicros = a
	}
	return e
}

func TestScheduleAtAndTimeline(t *testing.T) {
	tok := state.BillingPerToken
	d := func(day int) time.Time { return time.Date(2026, 3, day, 0, 0, 0, 0, time.UTC) }
	star1, star2 := entry("*", tok, billing.Epoch, 500, 1500), entry("*", tok, d(20), 600, 1800)
	m1, m2 := entry("m", tok, d(5), 100, 200), entry("m", tok, d(10), 150, 300)
	drop := billing.PriceEntry{Price: billing.Price{BaseModel: "m", BillingMethod: tok}, ValidFrom: d(15), Dropped: true}
	m3 := entry("m", tok, d(25), 90, 180)
	sch, err := billing.NewSchedule(3, []billing.PriceEntry{star1, star2, m1, m2, drop, m3, entry("*", state.BillingPerInstanceHour, billing.Epoch, 9, 0)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		model string
		at    time.Time
		want  billing.PriceEntry
	}{
		{"m", d(1), star1},                   // before its own first price
		{"m", d(5), m1},                      // from the hour it is valid
		{"m", d(5).Add(-time.Second), star1}, // not a second before
		{"m", d(12), m2},                     // the later price
		{"m", d(15), star1},                  // dropped: the fallback in force
		{"m", d(21), star2},                  // the fallback changed meanwhile
		{"m", d(26), m3},                     // priced again
		{"other", d(21), star2},              // never priced: the fallback
		{"other", d(19).Add(23 * time.Hour), star1},
	} {
		got := sch.At(tc.model, tok, tc.at)
		if got.Price != tc.want.Price || !got.ValidFrom.Equal(tc.want.ValidFrom) {
			t.Errorf("At(%s, %s) = %+v, want %+v", tc.model, tc.at.Format(time.RFC3339), got, tc.want)
		}
	}
	var got []string
	for _, e := range sch.Timeline("m", tok) {
		got = append(got, fmt.Sprintf("%s %s %d", e.ValidFrom.Format("01-02"), e.BaseModel, e.InputMicrosPerMTok))
	}
	want := []string{"01-01 * 500", "03-05 m 100", "03-10 m 150", "03-15 * 500", "03-20 * 600", "03-25 m 90"}
	if !slices.Equal(got, want) {
		t.Errorf("Timeline(m) = %q, want %q", got, want)
	}
	// The rates a query prices with say the same, model by model.
	rates := sch.TokenRates()
	for _, at := range []time.Time{d(1), d(5), d(12), d(15), d(21), d(26)} {
		for _, m := range []string{"m", "other"} {
			r, e := rates.At(m, at), sch.At(m, tok, at)
			if r.InputMicrosPerMTok != e.InputMicrosPerMTok || r.OutputMicrosPerMTok != e.OutputMicrosPerMTok {
				t.Errorf("rates.At(%s, %s) = %+v, schedule %+v", m, at.Format(time.RFC3339), r, e)
			}
		}
	}
}

func TestScheduleAdded(t *testing.T) {
	tok := state.BillingPerToken
	now := time.Date(2026, 3, 10, 14, 25, 0, 0, time.UTC)
	next := time.Date(2026, 3, 10, 15, 0, 0, 0, time.UTC)
	base := billing.DefaultPriceList()
	sch, err := billing.EmptySchedule().With(1, base)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("the first list is taken whole", func(t *testing.T) {
		got, err := billing.EmptySchedule().Added(append(base, entry("m", tok, time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), 1, 2)), now)
		if err != nil || len(got) != len(base)+1 {
			t.Errorf("Added = %d entries, %v", len(got), err)
		}
	})
	t.Run("the same list adds nothing", func(t *testing.T) {
		if got, err := sch.Added(base, now); err != nil || len(got) != 0 {
			t.Errorf("Added = %v, %v", got, err)
		}
	})
	t.Run("a model left out changes nothing", func(t *testing.T) {
		if got, err := sch.Added(base[:3], now); err != nil || len(got) != 0 {
			t.Errorf("Added = %v, %v", got, err)
		}
	})
	t.Run("a later price is added", func(t *testing.T) {
		e := entry("qwen2.5-7b-instruct", tok, next, 1, 2)
		got, err := sch.Added(append(base, e, e), now)
		if err != nil || len(got) != 1 || got[0].Price != e.Price {
			t.Errorf("Added = %v, %v", got, err)
		}
	})
	t.Run("a price changed in place is a conflict", func(t *testing.T) {
		changed := slices.Clone(base)
		changed[0].InputMicrosPerMTok++
		if _, err := sch.Added(changed, now); errs.KindOf(err) != errs.Conflict {
			t.Errorf("Added = %v, want Conflict", err)
		}
	})
	t.Run("a price from the current hour or earlier is refused", func(t *testing.T) {
		for _, from := range []time.Time{next.Add(-time.Hour), time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)} {
			if _, err := sch.Added([]billing.PriceEntry{entry("m", tok, from, 1, 2)}, now); errs.KindOf(err) != errs.Invalid {
				t.Errorf("from %s: Added = %v, want Invalid", from, err)
			}
		}
	})
}

func TestAtFallsBackToAnyModel(t *testing.T) {
	p := billing.DefaultSchedule()
	now := time.Now()
	got := p.At("qwen2.5-7b-instruct", state.BillingPerToken, now)
	if got.BaseModel != "qwen2.5-7b-instruct" || got.BillingMethod != state.BillingPerToken {
		t.Errorf("At(listed) = %+v", got)
	}
	got = p.At("some-new-model", state.BillingPerInstanceHour, now)
	if got.BaseModel != billing.AnyModel || got.BillingMethod != state.BillingPerInstanceHour {
		t.Errorf("At(unlisted) = %+v, want the %q price", got, billing.AnyModel)
	}
}

func TestTokenCostRoundsHalfUpPerLine(t *testing.T) {
	pr := billing.Rate{InputMicrosPerMTok: 150_000, OutputMicrosPerMTok: 600_000}
	tests := []struct {
		prompt, completion, want uint64
	}{
		{0, 0, 0},
		{1000, 500, 450},        // 0.15 + 0.30 exactly
		{1, 0, 0},               // 0.15 rounds down
		{3, 1, 1},               // 1.05
		{10, 0, 2},              // 1.5 rounds half up
		{3, 3, 2},               // 2.25
		{1_000_000, 0, 150_000}, // a million prompt tokens is the list price
		{0, 1_000_000, 600_000},
	}
	for _, tc := range tests {
		if got := billing.TokenCostMicros(tc.prompt, tc.completion, pr); got != tc.want {
			t.Errorf("TokenCostMicros(%d, %d) = %d, want %d", tc.prompt, tc.completion, got, tc.want)
		}
	}
	huge := billing.Rate{InputMicrosPerMTok: math.MaxUint64, OutputMicrosPerMTok: math.MaxUint64}
	if got := billing.TokenCostMicros(math.MaxUint64, math.MaxUint64, huge); got != math.MaxUint64 {
		t.Errorf("overflowing cost = %d, want saturation at MaxUint64", got)
	}
	// 128-bit intermediates: a product beyond 64 bits still divides exactly.
	if got, want := billing.TokenCostMicros(1<<40, 0, billing.Rate{InputMicrosPerMTok: 1 << 30}), uint64(1<<70/1_000_000); got != want && got != want+1 {
		t.Errorf("large cost = %d, want %d", got, want)
	}
}

func TestInstanceCostRoundsHalfUpPerHour(t *testing.T) {
	pr := billing.Price{InstanceHourMicros: 2_500_000} // 694.44 micros a second
	tests := []struct{ seconds, want uint64 }{
		{0, 0},
		{3600, 2_500_000},
		{1800, 1_250_000},
		{1, 694},
		{7200, 5_000_000}, // two instances for a whole hour
	}
	for _, tc := range tests {
		if got := billing.InstanceCostMicros(tc.seconds, pr); got != tc.want {
			t.Errorf("InstanceCostMicros(%d) = %d, want %d", tc.seconds, got, tc.want)
		}
	}
	half := billing.Price{InstanceHourMicros: 1800} // half a micro a second
	if got, want := billing.InstanceCostMicros(1, half), uint64(1); got != want {
		t.Errorf("half a micro: got %d, want %d (half up)", got, want)
	}
}
