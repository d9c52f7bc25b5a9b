package billing_test

import (
	"math"
	"testing"

	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

func TestDefaultPricesCoverTheCatalog(t *testing.T) {
	p := billing.DefaultPrices()
	listed := map[[2]string]bool{}
	for _, pr := range p.List() {
		listed[[2]string{pr.BaseModel, pr.BillingMethod}] = true
	}
	for _, m := range catalog.Default().Models() {
		for _, method := range []string{state.BillingPerToken, state.BillingPerInstanceHour} {
			if !listed[[2]string{m.Name, method}] {
				t.Errorf("catalog model %s has no %s price of its own", m.Name, method)
			}
		}
	}
	for _, pr := range p.List() {
		if pr.BillingMethod == state.BillingPerToken && (pr.InputMicrosPerMTok == 0 || pr.OutputMicrosPerMTok == 0) {
			t.Errorf("%s per-token is free", pr.BaseModel)
		}
		if pr.BillingMethod == state.BillingPerInstanceHour && pr.InstanceHourMicros == 0 {
			t.Errorf("%s per-instance-hour is free", pr.BaseModel)
		}
	}
}

func TestParsePricesRejects(t *testing.T) {
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
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := billing.ParsePrices([]byte(tc.list)); err == nil {
				t.Error("ParsePrices succeeded")
			}
		})
	}
}

func TestLookupFallsBackToAnyModel(t *testing.T) {
	p := billing.DefaultPrices()
	got := p.Lookup("qwen2.5-7b-instruct", state.BillingPerToken)
	if got.BaseModel != "qwen2.5-7b-instruct" || got.BillingMethod != state.BillingPerToken {
		t.Errorf("Lookup(listed) = %+v", got)
	}
	got = p.Lookup("some-new-model", state.BillingPerInstanceHour)
	if got.BaseModel != billing.AnyModel || got.BillingMethod != state.BillingPerInstanceHour {
		t.Errorf("Lookup(unlisted) = %+v, want the %q price", got, billing.AnyModel)
	}
}

func TestTokenCostRoundsHalfUpPerLine(t *testing.T) {
	pr := billing.Price{InputMicrosPerMTok: 150_000, OutputMicrosPerMTok: 600_000}
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
	huge := billing.Price{InputMicrosPerMTok: math.MaxUint64, OutputMicrosPerMTok: math.MaxUint64}
	if got := billing.TokenCostMicros(math.MaxUint64, math.MaxUint64, huge); got != math.MaxUint64 {
		t.Errorf("overflowing cost = %d, want saturation at MaxUint64", got)
	}
	// 128-bit intermediates: a product beyond 64 bits still divides exactly.
	if got, want := billing.TokenCostMicros(1<<40, 0, billing.Price{InputMicrosPerMTok: 1 << 30}), uint64(1<<70/1_000_000); got != want && got != want+1 {
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
