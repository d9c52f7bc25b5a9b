package billing

import (
	"cmp"
	"context"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

// Ways to break usage down.
const (
	GroupHour   = "hour"
	GroupDay    = "day"
	GroupAPIKey = "api_key"
)

// Currency is the currency of every cost.
const Currency = "USD"

// MaxWindow is the longest window a usage query may cover, by grouping:
// 31 days by hour, 366 days otherwise. Longer periods are what statements
// are for.
func MaxWindow(groupBy string) time.Duration {
	if groupBy == GroupHour {
		return 31 * 24 * time.Hour
	}
	return 366 * 24 * time.Hour
}

// Query asks for a service's usage in [From, To). A zero To means now; a
// zero From means the service's creation, or as far back as MaxWindow
// allows; both are widened to whole UTC hours, the unit usage is billed in.
type Query struct {
	ServiceID string
	From, To  time.Time
	GroupBy   string // "", GroupHour, GroupDay or GroupAPIKey
}

// ParseQuery reads a Query from request parameters: RFC 3339 times and a
// grouping. Each error is Invalid and names its parameter.
func ParseQuery(serviceID, from, to, groupBy string) (Query, error) {
	q := Query{ServiceID: serviceID, GroupBy: groupBy}
	if serviceID == "" {
		return q, errs.InvalidParam("service_id", "service_id is required")
	}
	for _, p := range []struct {
		name, value string
		t           *time.Time
	}{{"from", from, &q.From}, {"to", to, &q.To}} {
		if p.value == "" {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, p.value)
		if err != nil {
			return q, errs.InvalidParam(p.name, "%s must be an RFC 3339 time such as 2025-05-01T00:00:00Z", p.name)
		}
		if t.Year() < 1970 || t.Year() > 2105 {
			return q, errs.InvalidParam(p.name, "%s must be between 1970 and 2105", p.name)
		}
		*p.t = t.UTC()
	}
	switch groupBy {
	case "", GroupHour, GroupDay, GroupAPIKey:
	default:
		return q, errs.InvalidParam("group_by", "group_by must be hour, day or api_key")
	}
	if !q.From.IsZero() && !q.To.IsZero() && !q.To.After(q.From) {
		return q, errs.InvalidParam("to", "to must be after from")
	}
	return q, nil
}

// Usage is what a service used in a window and what it costs. The flat
// fields are the totals; Data, present when the query groups, breaks them
// down.
type Usage struct {
	ServiceID     string    `json:"service_id"`
	BaseModel     string    `json:"base_model"`
	BillingMethod string    `json:"billing_method"`
	From          time.Time `json:"from"`
	To            time.Time `json:"to"`
	GroupBy       string    `json:"group_by,omitempty"`
	// DeletedAt is when the service was deleted; nothing after it is billed.
	DeletedAt        time.Time `json:"deleted_at,omitzero"`
	Requests         uint64    `json:"requests"`
	PromptTokens     uint64    `json:"prompt_tokens"`
	CompletionTokens uint64    `json:"completion_tokens"`
	TotalTokens      uint64    `json:"total_tokens"`
	// InstanceSeconds is the time the service's instances took traffic.
	InstanceSeconds uint64 `json:"instance_seconds"`
	// CostMicros is the cost in micro-USD: token cost for a per-token
	// service, instance-time cost for a per-instance-hour one.
	CostMicros uint64 `json:"cost_micros"`
	Currency   string `json:"currency"`
	Data       []Row  `json:"data,omitzero"`
}

// Row is one period's or one API key's part of a Usage. API key rows
// carry token usage only: instance time belongs to no key.
type Row struct {
	PeriodStart      time.Time `json:"period_start,omitzero"`
	APIKeyID         string    `json:"api_key_id,omitempty"`
	Requests         uint64    `json:"requests"`
	PromptTokens     uint64    `json:"prompt_tokens"`
	CompletionTokens uint64    `json:"completion_tokens"`
	TotalTokens      uint64    `json:"total_tokens"`
	InstanceSeconds  uint64    `json:"instance_seconds"`
	CostMicros       uint64    `json:"cost_micros"`
}

func (r *Row) add(requests, prompt, completion, seconds, cost uint64) {
	r.Requests += requests
	r.PromptTokens += prompt
	r.CompletionTokens += completion
	r.TotalTokens += prompt + completion
	r.InstanceSeconds += seconds
	r.CostMicros += cost
}

// serviceIDPattern is what a service ID can be: a key of the services
// bucket, with no character NATS would read as a separator or wildcard.
var serviceIDPattern = regexp.MustCompile(`^[A-Za-z0-9_=-]{1,128}$`)

// Usage returns the usage of a service the caller owns (admins: any).
// Another owner's service is NotFound, so IDs do not leak.
//
// Tokens are billed per line (UTC hour, API key, base model) at the price
// in force at that hour, rounded half up to a micro-USD; instance time per
// UTC hour, likewise. Every total and every row is a sum of those, so rows
// always add up to the totals. Usage after the second of the service's
// deletion is not billed, nor is instance time after the deletion. The
// work is bounded: the window by MaxWindow, and the sums are made in the
// store.
func (s *Service) Usage(ctx context.Context, caller auth.Key, q Query) (Usage, error) {
	svc, err := s.reachable(ctx, caller, q.ServiceID)
	if err != nil {
		return Usage{}, err
	}
	now := s.Now()
	limit := MaxWindow(q.GroupBy)
	to := q.To
	if to.IsZero() {
		to = now
	}
	to = ceilHour(to)
	from := q.From
	if from.IsZero() {
		from = svc.CreatedAt
		if to.Sub(floorHour(from)) > limit {
			from = to.Add(-limit)
		}
	}
	if from.Before(Epoch) {
		from = Epoch
	}
	from = floorHour(from)
	if !to.After(from) {
		return Usage{}, errs.InvalidParam("to", "to must be after from")
	}
	if to.Sub(from) > limit {
		days := int(limit / (24 * time.Hour))
		switch q.GroupBy {
		case GroupHour:
			return Usage{}, errs.InvalidParam("group_by", "group_by=hour covers at most %d days; narrow from and to, or group by day", days)
		case "":
			return Usage{}, errs.InvalidParam("from", "a usage window covers at most %d days; narrow from and to, or read the monthly statements", days)
		default:
			return Usage{}, errs.InvalidParam("group_by", "group_by=%s covers at most %d days; narrow from and to, or read the monthly statements", q.GroupBy, days)
		}
	}
	schedule, err := s.schedule(ctx)
	if err != nil {
		return Usage{}, err
	}
	lc, err := s.store.Lifecycle(ctx, svc.ID, from, to)
	if err != nil {
		return Usage{}, err
	}
	u := Usage{
		ServiceID: svc.ID, BaseModel: svc.BaseModel, BillingMethod: svc.BillingMethod,
		From: from, To: to, GroupBy: q.GroupBy, DeletedAt: lc.DeletedAt, Currency: Currency,
	}
	by := Grouping{}
	switch q.GroupBy {
	case GroupHour:
		by.Period = time.Hour
	case GroupDay:
		by.Period = 24 * time.Hour
	case GroupAPIKey:
		by.APIKey = true
	}
	tokens, err := s.store.TokenUsage(ctx, TokenQuery{ServiceID: svc.ID, From: from, To: to, By: by, Rates: schedule.TokenRates()})
	if err != nil {
		return Usage{}, err
	}
	// Instance time stops at the deletion, and at now.
	instanceEnd := earliest(to, now)
	if !lc.DeletedAt.IsZero() {
		instanceEnd = earliest(instanceEnd, lc.DeletedAt.Truncate(time.Second))
	}
	seconds := SecondsByHour(Intervals(lc.Instances), from, instanceEnd)

	rows := map[string]*Row{}
	row := func(key string, start time.Time) *Row {
		r, ok := rows[key]
		if !ok {
			r = &Row{PeriodStart: start}
			if q.GroupBy == GroupAPIKey {
				r.APIKeyID = key
			}
			rows[key] = r
		}
		return r
	}
	total := Row{}
	for _, t := range tokens {
		var cost uint64
		if svc.BillingMethod == state.BillingPerToken {
			cost = t.CostMicros
		}
		total.add(t.Requests, t.PromptTokens, t.CompletionTokens, 0, cost)
		switch q.GroupBy {
		case GroupHour, GroupDay:
			row(t.PeriodStart.Format(time.RFC3339), t.PeriodStart.UTC()).add(t.Requests, t.PromptTokens, t.CompletionTokens, 0, cost)
		case GroupAPIKey:
			row(t.APIKeyID, time.Time{}).add(t.Requests, t.PromptTokens, t.CompletionTokens, 0, cost)
		}
	}
	for hour, secs := range seconds {
		var cost uint64
		if svc.BillingMethod == state.BillingPerInstanceHour {
			cost = InstanceCostMicros(secs, schedule.At(svc.BaseModel, state.BillingPerInstanceHour, hour).Price)
		}
		total.add(0, 0, 0, secs, cost)
		switch q.GroupBy {
		case GroupHour:
			row(hour.Format(time.RFC3339), hour).add(0, 0, 0, secs, cost)
		case GroupDay:
			day := hour.Truncate(24 * time.Hour)
			row(day.Format(time.RFC3339), day).add(0, 0, 0, secs, cost)
		case GroupAPIKey:
			// Instance time belongs to no key: one row with an empty
			// api_key_id, so the rows still add up to the totals.
			row("", time.Time{}).add(0, 0, 0, secs, cost)
		}
	}
	u.Requests, u.PromptTokens, u.CompletionTokens, u.TotalTokens = total.Requests, total.PromptTokens, total.CompletionTokens, total.TotalTokens
	u.InstanceSeconds, u.CostMicros = total.InstanceSeconds, total.CostMicros
	if q.GroupBy != "" {
		u.Data = make([]Row, 0, len(rows))
		for _, r := range rows {
			u.Data = append(u.Data, *r)
		}
		slices.SortFunc(u.Data, func(a, b Row) int {
			if q.GroupBy == GroupAPIKey {
				return cmp.Or(cmp.Compare(b.CostMicros, a.CostMicros), cmp.Compare(b.TotalTokens, a.TotalTokens), strings.Compare(a.APIKeyID, b.APIKeyID))
			}
			return a.PeriodStart.Compare(b.PeriodStart)
		})
	}
	return u, nil
}

// reachable returns the service with ID id if caller may read its usage.
// A malformed ID, a missing service and another owner's all answer the
// same NotFound, so IDs do not leak.
func (s *Service) reachable(ctx context.Context, caller auth.Key, id string) (state.Service, error) {
	if id == "" {
		return state.Service{}, errs.InvalidParam("service_id", "service_id is required")
	}
	notFound := errs.E(errs.NotFound, "service %q not found", id)
	if !serviceIDPattern.MatchString(id) {
		return state.Service{}, notFound
	}
	svc, err := s.services.Service(ctx, id)
	if errs.KindOf(err) == errs.NotFound {
		return state.Service{}, notFound
	}
	if err != nil {
		return state.Service{}, err
	}
	if !caller.Reaches(svc.OwnerID, svc.ID) {
		return state.Service{}, notFound
	}
	return svc, nil
}

// schedule returns the stored price schedule; before any is stored there
// is nothing to bill with, and the caller is told to come back.
func (s *Service) schedule(ctx context.Context) (*Schedule, error) {
	sch, err := s.store.PriceSchedule(ctx)
	if err != nil {
		return nil, err
	}
	if len(sch.entries) == 0 {
		return nil, errs.E(errs.Unavailable, "billing has not stored its price list yet; try again shortly")
	}
	return sch, nil
}

// earliest returns the earlier of a and b.
func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func floorHour(t time.Time) time.Time { return t.UTC().Truncate(time.Hour) }

func ceilHour(t time.Time) time.Time {
	f := floorHour(t)
	if f.Equal(t) {
		return f
	}
	return f.Add(time.Hour)
}
