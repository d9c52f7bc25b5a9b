package billing

import (
	"cmp"
	_ "embed"
	"encoding/json"
	"fmt"
	"math/bits"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

//go:embed prices.json
var defaultPrices []byte

// AnyModel is the base model name of the prices that apply to models the
// schedule does not price.
const AnyModel = "*"

// Epoch is the ValidFrom of a price given without one: it applies to all
// usage, however old.
var Epoch = time.Unix(0, 0).UTC()

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

// PriceEntry is a price in force from ValidFrom (a whole UTC hour) until
// the next entry for the same base model and billing method. Entries are
// never changed once stored: a new price is a new entry.
type PriceEntry struct {
	Price
	ValidFrom time.Time `json:"valid_from"`
	// Dropped ends the model's own price at ValidFrom: from then on the
	// model takes the AnyModel price of its billing method. It carries no
	// prices.
	Dropped bool `json:"dropped,omitempty"`
	// Revision is the revision of the schedule that added the entry; 0
	// for an entry not stored yet.
	Revision uint64 `json:"revision,omitempty"`
}

// key is what identifies an entry: no two entries share one.
func (e PriceEntry) key() entryKey { return entryKey{e.BaseModel, e.BillingMethod, e.ValidFrom.Unix()} }

type entryKey struct {
	model, method string
	from          int64
}

// same reports whether e and o say the same thing, whatever revision
// added them.
func (e PriceEntry) same(o PriceEntry) bool {
	return e.Price == o.Price && e.ValidFrom.Equal(o.ValidFrom) && e.Dropped == o.Dropped
}

// modelName is what a base model name in a price can be: the names the
// catalog uses, or AnyModel.
var modelName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$`)

// check reports what is wrong with one entry on its own.
func (e PriceEntry) check() error {
	switch {
	case e.BaseModel == "":
		return fmt.Errorf("an entry has no base_model")
	case e.BaseModel != AnyModel && !modelName.MatchString(e.BaseModel):
		return fmt.Errorf("base_model %q is not a model name", e.BaseModel)
	case e.BillingMethod != state.BillingPerToken && e.BillingMethod != state.BillingPerInstanceHour:
		return fmt.Errorf("%s: unknown billing_method %q", e.BaseModel, e.BillingMethod)
	case !e.ValidFrom.Equal(e.ValidFrom.Truncate(time.Hour)) || e.ValidFrom.Before(Epoch) || !storable(e.ValidFrom):
		return fmt.Errorf("%s %s: valid_from %s is not a whole UTC hour between 1970 and 2105", e.BaseModel, e.BillingMethod, e.ValidFrom.Format(time.RFC3339))
	case e.Dropped && e.BaseModel == AnyModel:
		return fmt.Errorf("the %q price of %s cannot be dropped: it is what every other model falls back to", AnyModel, e.BillingMethod)
	case e.Dropped && (e.InputMicrosPerMTok != 0 || e.OutputMicrosPerMTok != 0 || e.InstanceHourMicros != 0):
		return fmt.Errorf("%s %s from %s is dropped and sets prices", e.BaseModel, e.BillingMethod, e.ValidFrom.Format(time.RFC3339))
	case e.BillingMethod == state.BillingPerToken && e.InstanceHourMicros != 0:
		return fmt.Errorf("%s per-token sets instance_hour_micros", e.BaseModel)
	case e.BillingMethod == state.BillingPerInstanceHour && (e.InputMicrosPerMTok != 0 || e.OutputMicrosPerMTok != 0):
		return fmt.Errorf("%s per-instance-hour sets token prices", e.BaseModel)
	}
	return nil
}

// Schedule is every price entry billing has ever had, at one revision:
// the price of any model under any billing method at any hour. It is
// immutable and safe for concurrent use.
type Schedule struct {
	revision uint64
	entries  []PriceEntry                   // by model, method, valid_from
	byKey    map[[2]string][]PriceEntry     // by valid_from
	index    map[entryKey]PriceEntry        // every entry
	models   map[string]map[string]struct{} // billing method → models with entries
}

// NewSchedule returns the schedule of entries at revision. It checks each
// entry, that no two share a base model, billing method and valid_from,
// and that both billing methods have an AnyModel price from Epoch on, so
// every model has a price at every hour.
func NewSchedule(revision uint64, entries []PriceEntry) (*Schedule, error) {
	s := &Schedule{revision: revision, byKey: map[[2]string][]PriceEntry{}, index: map[entryKey]PriceEntry{},
		models: map[string]map[string]struct{}{}}
	for _, e := range entries {
		e.ValidFrom = e.ValidFrom.UTC()
		if err := e.check(); err != nil {
			return nil, errs.E(errs.Invalid, "price schedule: %v", err)
		}
		if prev, dup := s.index[e.key()]; dup {
			if !prev.same(e) {
				return nil, errs.E(errs.Invalid, "price schedule: %s %s from %s appears twice with different prices",
					e.BaseModel, e.BillingMethod, e.ValidFrom.Format(time.RFC3339))
			}
			continue
		}
		s.index[e.key()] = e
		s.entries = append(s.entries, e)
		k := [2]string{e.BaseModel, e.BillingMethod}
		s.byKey[k] = append(s.byKey[k], e)
		if s.models[e.BillingMethod] == nil {
			s.models[e.BillingMethod] = map[string]struct{}{}
		}
		s.models[e.BillingMethod][e.BaseModel] = struct{}{}
	}
	for _, m := range []string{state.BillingPerToken, state.BillingPerInstanceHour} {
		if _, ok := s.index[entryKey{AnyModel, m, Epoch.Unix()}]; !ok {
			return nil, errs.E(errs.Invalid, "price schedule: no %q price for %s valid from %s", AnyModel, m, Epoch.Format(time.RFC3339))
		}
	}
	slices.SortFunc(s.entries, compareEntries)
	for k := range s.byKey {
		slices.SortFunc(s.byKey[k], compareEntries)
	}
	return s, nil
}

func compareEntries(a, b PriceEntry) int {
	return cmp.Or(strings.Compare(a.BaseModel, b.BaseModel), strings.Compare(a.BillingMethod, b.BillingMethod), a.ValidFrom.Compare(b.ValidFrom))
}

// ParsePriceList decodes a price list: a JSON array of entries, each a
// Price with an optional valid_from (RFC 3339, a whole UTC hour; Epoch
// when absent) and dropped. The list is checked as NewSchedule checks a
// schedule.
func ParsePriceList(b []byte) ([]PriceEntry, error) {
	var raw []struct {
		Price
		ValidFrom *time.Time `json:"valid_from"`
		Dropped   bool       `json:"dropped"`
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("parse price list: %w", err)
	}
	out := make([]PriceEntry, 0, len(raw))
	seen := map[entryKey]bool{}
	for _, r := range raw {
		e := PriceEntry{Price: r.Price, ValidFrom: Epoch, Dropped: r.Dropped}
		if r.ValidFrom != nil {
			e.ValidFrom = r.ValidFrom.UTC()
		}
		if seen[e.key()] {
			return nil, fmt.Errorf("price list: %s %s from %s appears twice", e.BaseModel, e.BillingMethod, e.ValidFrom.Format(time.RFC3339))
		}
		seen[e.key()] = true
		out = append(out, e)
	}
	if _, err := NewSchedule(0, out); err != nil {
		return nil, fmt.Errorf("price list: %w", err)
	}
	return out, nil
}

// DefaultPriceList returns the built-in price list (prices.json).
func DefaultPriceList() []PriceEntry {
	list, err := ParsePriceList(defaultPrices)
	if err != nil {
		panic(err) // the embedded file is checked by tests
	}
	return list
}

// EmptySchedule returns the schedule before any price is stored: revision
// 0, no entries, and every price zero.
func EmptySchedule() *Schedule {
	return &Schedule{byKey: map[[2]string][]PriceEntry{}, index: map[entryKey]PriceEntry{}, models: map[string]map[string]struct{}{}}
}

// DefaultSchedule returns the built-in price list as a schedule at
// revision 0.
func DefaultSchedule() *Schedule {
	s, err := NewSchedule(0, DefaultPriceList())
	if err != nil {
		panic(err)
	}
	return s
}

// Revision is the schedule's revision: that of the latest entries added.
func (s *Schedule) Revision() uint64 { return s.revision }

// Entries returns every entry, ordered by base model, billing method and
// valid_from.
func (s *Schedule) Entries() []PriceEntry { return slices.Clone(s.entries) }

// At returns the price of model under method at t: the model's own entry
// in force at t, unless there is none or it is dropped, and then the
// AnyModel entry in force at t. The entry's BaseModel says which applied.
func (s *Schedule) At(model, method string, t time.Time) PriceEntry {
	if e, ok := inForce(s.byKey[[2]string{model, method}], t); ok && !e.Dropped {
		return e
	}
	e, _ := inForce(s.byKey[[2]string{AnyModel, method}], t)
	return e
}

// inForce returns the last of entries (sorted by valid_from) valid at t.
func inForce(entries []PriceEntry, t time.Time) (PriceEntry, bool) {
	i, _ := slices.BinarySearchFunc(entries, t, func(e PriceEntry, t time.Time) int {
		if e.ValidFrom.After(t) {
			return 1
		}
		return -1
	})
	if i == 0 {
		return PriceEntry{}, false
	}
	return entries[i-1], true
}

// Timeline returns the prices model has under method over all time, as
// At answers them: one entry per change, each in force from its
// ValidFrom until the next one's, the first from Epoch. BaseModel says
// whose price applies: the model's own or AnyModel.
func (s *Schedule) Timeline(model, method string) []PriceEntry {
	var starts []time.Time
	for _, e := range s.byKey[[2]string{model, method}] {
		starts = append(starts, e.ValidFrom)
	}
	for _, e := range s.byKey[[2]string{AnyModel, method}] {
		starts = append(starts, e.ValidFrom)
	}
	slices.SortFunc(starts, time.Time.Compare)
	starts = slices.CompactFunc(starts, time.Time.Equal)
	var out []PriceEntry
	for _, t := range starts {
		e := s.At(model, method, t)
		if n := len(out); n > 0 && out[n-1].Price == e.Price {
			continue
		}
		e.ValidFrom = t
		out = append(out, e)
	}
	return out
}

// Rates are per-token prices over time: a timeline per base model, and
// Default for every model without one. A query prices each usage line
// with the rate in force at its hour.
type Rates struct {
	ByModel map[string][]Rate
	Default []Rate
}

// Rate is a per-token price in force from From until the next Rate.
type Rate struct {
	From                time.Time
	InputMicrosPerMTok  uint64
	OutputMicrosPerMTok uint64
}

// TokenRates returns the per-token rates of every model the schedule
// prices, and the AnyModel rates as the default.
func (s *Schedule) TokenRates() Rates {
	rates := func(model string) []Rate {
		var out []Rate
		for _, e := range s.Timeline(model, state.BillingPerToken) {
			out = append(out, Rate{From: e.ValidFrom, InputMicrosPerMTok: e.InputMicrosPerMTok, OutputMicrosPerMTok: e.OutputMicrosPerMTok})
		}
		return out
	}
	r := Rates{ByModel: map[string][]Rate{}, Default: rates(AnyModel)}
	for m := range s.models[state.BillingPerToken] {
		if m != AnyModel {
			r.ByModel[m] = rates(m)
		}
	}
	return r
}

// At returns the rate of model at t.
func (r Rates) At(model string, t time.Time) Rate {
	rs, ok := r.ByModel[model]
	if !ok {
		rs = r.Default
	}
	var out Rate
	for _, x := range rs {
		if x.From.After(t) {
			break
		}
		out = x
	}
	return out
}

// Added returns the entries of list the schedule does not hold yet: what
// a price list adds to it. An entry the schedule holds with other prices
// is a Conflict, since a price is never changed once stored, and a new
// entry valid before the next whole hour after now is Invalid, since it
// would change what usage already served costs. An empty schedule (the
// first list ever stored) takes any entry.
func (s *Schedule) Added(list []PriceEntry, now time.Time) ([]PriceEntry, error) {
	var out []PriceEntry
	seen := map[entryKey]bool{}
	for _, e := range list {
		e.ValidFrom, e.Revision = e.ValidFrom.UTC(), 0
		if err := e.check(); err != nil {
			return nil, errs.E(errs.Invalid, "price list: %v", err)
		}
		if prev, ok := s.index[e.key()]; ok {
			if !prev.same(e) {
				return nil, errs.E(errs.Conflict, "price list: %s %s from %s is already %s; a price never changes once stored: add an entry with a later valid_from instead",
					e.BaseModel, e.BillingMethod, e.ValidFrom.Format(time.RFC3339), describe(prev))
			}
			continue
		}
		if seen[e.key()] {
			continue
		}
		if len(s.entries) > 0 && !e.ValidFrom.After(now) {
			return nil, errs.E(errs.Invalid, "price list: %s %s from %s starts before the next hour (it is %s): it would change what usage already served costs",
				e.BaseModel, e.BillingMethod, e.ValidFrom.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
		seen[e.key()] = true
		out = append(out, e)
	}
	return out, nil
}

// With returns the schedule with entries added at revision.
func (s *Schedule) With(revision uint64, entries []PriceEntry) (*Schedule, error) {
	all := s.Entries()
	for _, e := range entries {
		e.Revision = revision
		all = append(all, e)
	}
	return NewSchedule(revision, all)
}

func describe(e PriceEntry) string {
	switch {
	case e.Dropped:
		return "dropped"
	case e.BillingMethod == state.BillingPerInstanceHour:
		return fmt.Sprintf("%d micros an hour", e.InstanceHourMicros)
	default:
		return fmt.Sprintf("%d/%d micros per million tokens", e.InputMicrosPerMTok, e.OutputMicrosPerMTok)
	}
}

// TokenCostMicros is the cost of a Line's tokens at rate: prompt and
// completion tokens times their prices per million, divided by a million
// and rounded half up to a whole micro-USD, in 128-bit integer arithmetic.
func TokenCostMicros(prompt, completion uint64, rate Rate) uint64 {
	return mulAddDivRound(prompt, rate.InputMicrosPerMTok, completion, rate.OutputMicrosPerMTok, 1_000_000)
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
