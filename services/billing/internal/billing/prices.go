package billing

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"math/bits"
	"slices"
	"strings"

	"github.com/modelport/modelport/libs/state"
)

//go:embed prices.json
var defaultPrices []byte

// AnyModel is the base model name of the prices that apply to models the
// list does not name.
const AnyModel = "*"

// Price is what one base model costs under one billing method, in integer
// micro-USD (1 USD = 1,000,000 micros). A per-token price sets only the
// token prices; a per-instance-hour price sets only the hourly one.
type Price struct {
	BaseModel     string `json:"base_model"`
	BillingMethod string `json:"billing_method"`
	// InputMicrosPerMTok is the price of one million prompt tokens.
	InputMicrosPerMTok uint64 `json:"input_micros_per_mtok"`
	// OutputMicrosPerMTok is the price of one million completion tokens.
	OutputMicrosPerMTok uint64 `json:"output_micros_per_mtok"`
	// InstanceHourMicros is the price of one instance running one hour.
	InstanceHourMicros uint64 `json:"instance_hour_micros"`
}

// Prices is an immutable price list, safe for concurrent use.
type Prices struct {
	list  []Price
	byKey map[[2]string]Price
}

// DefaultPrices returns the built-in price list (prices.json).
func DefaultPrices() *Prices {
	p, err := ParsePrices(defaultPrices)
	if err != nil {
		panic(err) // the embedded file is checked by tests
	}
	return p
}

// ParsePrices decodes and checks a price list: a JSON array of Price. Every
// (base model, billing method) appears once, and both billing methods have
// an AnyModel price, so every service has a price.
func ParsePrices(b []byte) (*Prices, error) {
	var list []Price
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("parse price list: %w", err)
	}
	p := &Prices{list: list, byKey: map[[2]string]Price{}}
	for _, pr := range list {
		key := [2]string{pr.BaseModel, pr.BillingMethod}
		switch {
		case pr.BaseModel == "":
			return nil, fmt.Errorf("price list: an entry has no base_model")
		case pr.BillingMethod == state.BillingPerToken && pr.InstanceHourMicros != 0:
			return nil, fmt.Errorf("price list: %s per-token sets instance_hour_micros", pr.BaseModel)
		case pr.BillingMethod == state.BillingPerInstanceHour && (pr.InputMicrosPerMTok != 0 || pr.OutputMicrosPerMTok != 0):
			return nil, fmt.Errorf("price list: %s per-instance-hour sets token prices", pr.BaseModel)
		case pr.BillingMethod != state.BillingPerToken && pr.BillingMethod != state.BillingPerInstanceHour:
			return nil, fmt.Errorf("price list: %s: unknown billing_method %q", pr.BaseModel, pr.BillingMethod)
		}
		if _, dup := p.byKey[key]; dup {
			return nil, fmt.Errorf("price list: %s %s appears twice", pr.BaseModel, pr.BillingMethod)
		}
		p.byKey[key] = pr
	}
	for _, m := range []string{state.BillingPerToken, state.BillingPerInstanceHour} {
		if _, ok := p.byKey[[2]string{AnyModel, m}]; !ok {
			return nil, fmt.Errorf("price list: no %q price for %s", AnyModel, m)
		}
	}
	slices.SortFunc(p.list, func(a, b Price) int {
		if c := strings.Compare(a.BaseModel, b.BaseModel); c != 0 {
			return c
		}
		return strings.Compare(a.BillingMethod, b.BillingMethod)
	})
	return p, nil
}

// List returns every price, ordered by base model and billing method.
func (p *Prices) List() []Price { return slices.Clone(p.list) }

// Lookup returns the price of model under method: the model's own, or the
// AnyModel one.
func (p *Prices) Lookup(model, method string) Price {
	if pr, ok := p.byKey[[2]string{model, method}]; ok {
		return pr
	}
	return p.byKey[[2]string{AnyModel, method}]
}

// TokenCostMicros is the cost of a Line's tokens: prompt and completion
// tokens times their prices per million, divided by a million and rounded
// half up to a whole micro-USD, in 128-bit integer arithmetic.
func TokenCostMicros(prompt, completion uint64, pr Price) uint64 {
	return mulAddDivRound(prompt, pr.InputMicrosPerMTok, completion, pr.OutputMicrosPerMTok, 1_000_000)
}

// InstanceCostMicros is the cost of seconds of instance time within one
// hour: seconds times the hourly price, divided by 3600 and rounded half
// up to a whole micro-USD.
func InstanceCostMicros(seconds uint64, pr Price) uint64 {
	return mulAddDivRound(seconds, pr.InstanceHourMicros, 0, 0, 3600)
}

// mulAddDivRound returns (a*b + c*d + div/2) / div without overflow in the
// intermediate; a result beyond uint64 saturates (no real bill comes near).
func mulAddDivRound(a, b, c, d, div uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	hi2, lo2 := bits.Mul64(c, d)
	var carry uint64
	lo, carry = bits.Add64(lo, lo2, 0)
	hi, over := bits.Add64(hi, hi2, carry)
	lo, carry = bits.Add64(lo, div/2, 0)
	hi, over2 := bits.Add64(hi, 0, carry)
	if over != 0 || over2 != 0 || hi >= div {
		return ^uint64(0)
	}
	q, _ := bits.Div64(hi, lo, div)
	return q
}
