package billing

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

// PeriodStore keeps closed periods and their statements. Implemented by
// internal/clickhouse.
type PeriodStore interface {
	// Closings returns every closed period, oldest first: the first
	// closing recorded of each.
	Closings(ctx context.Context) ([]Closing, error)
	// SaveStatement stores lines as the statement of c, then records c,
	// so a period is closed only once its statement is complete. Lines
	// stored again under the same close ID count once.
	SaveStatement(ctx context.Context, c Closing, lines []StatementLine) error
	// StatementLines returns the stored lines of the given closings.
	StatementLines(ctx context.Context, closeIDs []string) ([]StatementLine, error)
	// Lifecycles returns, for every service with instance events before
	// to, what Reader.Lifecycle returns for it over [from, to).
	Lifecycles(ctx context.Context, from, to time.Time) (map[string]Lifecycle, error)
}

// Period is a billing period: one calendar month in UTC, written like
// "2026-11".
type Period struct{ start time.Time }

// ParsePeriod reads a period written like "2026-11". The error is Invalid
// on the period parameter.
func ParsePeriod(s string) (Period, error) {
	t, err := time.Parse("2006-01", s)
	if err != nil || t.Year() < 1970 || t.Year() > 2105 {
		return Period{}, errs.InvalidParam("period", "period must be a month written like 2026-11")
	}
	return Period{t.UTC()}, nil
}

// PeriodOf returns the period t falls in.
func PeriodOf(t time.Time) Period {
	t = t.UTC()
	return Period{time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)}
}

// Start is the period's first instant.
func (p Period) Start() time.Time { return p.start }

// End is the first instant after the period.
func (p Period) End() time.Time { return p.start.AddDate(0, 1, 0) }

// Next is the period after p.
func (p Period) Next() Period { return Period{p.End()} }

// Prev is the period before p.
func (p Period) Prev() Period { return Period{p.start.AddDate(0, -1, 0)} }

// IsZero reports whether p is the zero Period.
func (p Period) IsZero() bool { return p.start.IsZero() }

// String writes p like "2026-11".
func (p Period) String() string {
	if p.IsZero() {
		return ""
	}
	return p.start.Format("2006-01")
}

// Compare orders periods by time.
func (p Period) Compare(o Period) int { return p.start.Compare(o.start) }

// MarshalText implements encoding.TextMarshaler.
func (p Period) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Period) UnmarshalText(b []byte) error {
	q, err := ParsePeriod(string(b))
	if err != nil {
		return err
	}
	*p = q
	return nil
}

// Closing records that a period was closed: its statement, stored under
// CloseID, is final.
type Closing struct {
	Period   Period    `json:"period"`
	ClosedAt time.Time `json:"closed_at"`
	CloseID  string    `json:"close_id"`
	// ClosedBy is the ID of the admin API key that closed it.
	ClosedBy string `json:"closed_by"`
	// PriceRevision is the price schedule's revision when it closed.
	PriceRevision uint64 `json:"price_revision"`
}

// Line kinds.
const (
	// LineUsage is usage of the statement's own period.
	LineUsage = "usage"
	// LineAdjustment is a change to a closed earlier period's usage that
	// arrived after it closed (ForPeriod says which): late events, a late
	// stop or deletion. It can be negative.
	LineAdjustment = "adjustment"
)

// Line parts.
const (
	// PartTokens is tokens through one API key and base model.
	PartTokens = "tokens"
	// PartInstanceTime is a service's instance time.
	PartInstanceTime = "instance_time"
)

// UnknownBillingMethod is the billing method of a service billing cannot
// find: its usage is listed, not charged, and shows up.
const UnknownBillingMethod = "unknown"

// StatementLine is one line of a service's statement: tokens through one
// API key and base model, or the service's instance time (no API key).
// Amounts are signed because adjustments can take back.
type StatementLine struct {
	Period           Period `json:"-"`
	Kind             string `json:"kind"`
	ForPeriod        Period `json:"for_period"`
	Part             string `json:"part"`
	ServiceID        string `json:"-"`
	OwnerID          string `json:"-"`
	ServiceName      string `json:"-"`
	BillingMethod    string `json:"-"`
	APIKeyID         string `json:"api_key_id"`
	BaseModel        string `json:"base_model"`
	Requests         int64  `json:"requests"`
	PromptTokens     int64  `json:"prompt_tokens"`
	CompletionTokens int64  `json:"completion_tokens"`
	TotalTokens      int64  `json:"total_tokens"`
	InstanceSeconds  int64  `json:"instance_seconds"`
	CostMicros       int64  `json:"cost_micros"`
}

// lineKey is what a line of one period's usage is matched by across
// statements, to work out adjustments.
type lineKey struct{ service, part, key, model string }

func (l StatementLine) key() lineKey { return lineKey{l.ServiceID, l.Part, l.APIKeyID, l.BaseModel} }

func (l StatementLine) zero() bool {
	return l.Requests == 0 && l.PromptTokens == 0 && l.CompletionTokens == 0 && l.InstanceSeconds == 0 && l.CostMicros == 0
}

// Statements is what GET /api/v1/statements answers: the statement of
// each service in a period that the caller may see.
type Statements struct {
	Period Period `json:"period"`
	// Status is "closed" (the statements are final) or "open" (they are
	// worked out now and change as usage arrives).
	Status     string    `json:"status"`
	From       time.Time `json:"from"`
	To         time.Time `json:"to"`
	ClosedAt   time.Time `json:"closed_at,omitzero"`
	CostMicros int64     `json:"cost_micros"`
	Currency   string    `json:"currency"`
	// PriceRevision is the revision of the price schedule the statements
	// were worked out with.
	PriceRevision uint64      `json:"price_revision"`
	Data          []Statement `json:"data"`
}

// Statement is one service's bill for a period: its own usage and the
// adjustments to earlier closed periods it carries.
type Statement struct {
	ServiceID     string `json:"service_id"`
	OwnerID       string `json:"owner_id"`
	ServiceName   string `json:"service_name"`
	BaseModel     string `json:"base_model"`
	BillingMethod string `json:"billing_method"`
	// UsageCostMicros is the cost of the period's own usage;
	// AdjustmentsCostMicros the sum of its adjustment lines; CostMicros
	// both.
	UsageCostMicros       int64           `json:"usage_cost_micros"`
	AdjustmentsCostMicros int64           `json:"adjustments_cost_micros"`
	CostMicros            int64           `json:"cost_micros"`
	Lines                 []StatementLine `json:"lines"`
}

// Statement statuses.
const (
	StatusOpen   = "open"
	StatusClosed = "closed"
)

// AdjustmentPeriods is how many closed periods back a statement looks for
// late usage. Events wait in JetStream at most 90 days, so nothing can
// arrive later than that.
const AdjustmentPeriods = 4

// ClosePeriod closes p for good: its statements are worked out from what
// is stored now and kept, and usage of p that arrives later is billed in
// the next open period as adjustments. Only admins may close, only a
// period that has ended, and closing a closed period returns its closing.
func (s *Service) ClosePeriod(ctx context.Context, caller auth.Key, p Period) (Closing, error) {
	if !caller.Admin {
		return Closing{}, errs.E(errs.Forbidden, "only admins may close a period")
	}
	if p.IsZero() {
		return Closing{}, errs.InvalidParam("period", "period is required")
	}
	now := s.Now()
	if now.Before(p.End()) {
		return Closing{}, errs.E(errs.Conflict, "period %s has not ended yet (it ends %s)", p, p.End().Format(time.RFC3339))
	}
	var out Closing
	err := s.locks.Hold(ctx, "periods", func(ctx context.Context) error {
		closings, err := s.store.Closings(ctx)
		if err != nil {
			return err
		}
		for _, c := range closings {
			if c.Period == p {
				out = c
				return nil
			}
		}
		schedule, err := s.schedule(ctx)
		if err != nil {
			return err
		}
		lines, err := s.statementLines(ctx, schedule, closings, p, s.Now())
		if err != nil {
			return err
		}
		out = Closing{Period: p, ClosedAt: s.Now(), CloseID: uuid.NewString(), ClosedBy: caller.ID, PriceRevision: schedule.Revision()}
		return s.store.SaveStatement(ctx, out, lines)
	})
	return out, err
}

// Closings returns the closed periods, oldest first.
func (s *Service) Closings(ctx context.Context) ([]Closing, error) { return s.store.Closings(ctx) }

// Statements returns the statements of p that caller may see: each
// service's own (admins: all). A closed period answers what was stored
// when it closed; an open one what is stored now, with the adjustments it
// would carry if it closed now.
func (s *Service) Statements(ctx context.Context, caller auth.Key, p Period) (Statements, error) {
	if p.IsZero() {
		return Statements{}, errs.InvalidParam("period", "period is required")
	}
	closings, err := s.store.Closings(ctx)
	if err != nil {
		return Statements{}, err
	}
	out := Statements{Period: p, Status: StatusOpen, From: p.Start(), To: p.End(), Currency: Currency, Data: []Statement{}}
	var lines []StatementLine
	if c, ok := closingOf(closings, p); ok {
		out.Status, out.ClosedAt, out.PriceRevision = StatusClosed, c.ClosedAt, c.PriceRevision
		if lines, err = s.store.StatementLines(ctx, []string{c.CloseID}); err != nil {
			return Statements{}, err
		}
	} else {
		if !s.Now().After(p.Start()) {
			return out, nil
		}
		schedule, err := s.schedule(ctx)
		if err != nil {
			return Statements{}, err
		}
		out.PriceRevision = schedule.Revision()
		if lines, err = s.statementLines(ctx, schedule, closings, p, s.Now()); err != nil {
			return Statements{}, err
		}
	}
	byService := map[string]*Statement{}
	for _, l := range lines {
		if !caller.Reaches(l.OwnerID, l.ServiceID) || (l.OwnerID == "" && !caller.Admin) {
			continue
		}
		st, ok := byService[l.ServiceID]
		if !ok {
			st = &Statement{ServiceID: l.ServiceID, OwnerID: l.OwnerID, ServiceName: l.ServiceName, BillingMethod: l.BillingMethod}
			byService[l.ServiceID] = st
		}
		if st.BaseModel == "" || l.Part == PartInstanceTime {
			st.BaseModel = l.BaseModel
		}
		if l.Kind == LineUsage {
			st.UsageCostMicros += l.CostMicros
		} else {
			st.AdjustmentsCostMicros += l.CostMicros
		}
		st.CostMicros += l.CostMicros
		st.Lines = append(st.Lines, l)
	}
	for _, st := range byService {
		slices.SortFunc(st.Lines, compareLines)
		out.CostMicros += st.CostMicros
		out.Data = append(out.Data, *st)
	}
	slices.SortFunc(out.Data, func(a, b Statement) int {
		return cmp.Or(strings.Compare(a.OwnerID, b.OwnerID), strings.Compare(a.ServiceName, b.ServiceName), strings.Compare(a.ServiceID, b.ServiceID))
	})
	return out, nil
}

func compareLines(a, b StatementLine) int {
	return cmp.Or(strings.Compare(b.Kind, a.Kind), b.ForPeriod.Compare(a.ForPeriod), strings.Compare(b.Part, a.Part),
		strings.Compare(a.APIKeyID, b.APIKeyID), strings.Compare(a.BaseModel, b.BaseModel))
}

func closingOf(closings []Closing, p Period) (Closing, bool) {
	for _, c := range closings {
		if c.Period == p {
			return c, true
		}
	}
	return Closing{}, false
}

// statementLines works out the statement of period p as of now: the usage
// of p, and an adjustment for each earlier closed period whose usage has
// changed since it closed and whose next open period is p.
func (s *Service) statementLines(ctx context.Context, schedule *Schedule, closings []Closing, p Period, now time.Time) ([]StatementLine, error) {
	lines, err := s.periodUsage(ctx, schedule, p, now)
	if err != nil {
		return nil, err
	}
	for i := range lines {
		lines[i].Period, lines[i].Kind, lines[i].ForPeriod = p, LineUsage, p
	}
	// The closed periods just before p, nearest first, up to the first
	// open one: p is their next open period.
	var late []Period
	for q, n := p.Prev(), 0; n < AdjustmentPeriods; q, n = q.Prev(), n+1 {
		if _, ok := closingOf(closings, q); !ok {
			break
		}
		late = append(late, q)
	}
	if len(late) == 0 {
		return lines, nil
	}
	// What the statements closed so far have billed for each of them.
	var ids []string
	for _, c := range closings {
		if c.Period.Compare(late[len(late)-1]) >= 0 && c.Period.Compare(p) < 0 {
			ids = append(ids, c.CloseID)
		}
	}
	billed, err := s.store.StatementLines(ctx, ids)
	if err != nil {
		return nil, err
	}
	for _, q := range late {
		live, err := s.periodUsage(ctx, schedule, q, now)
		if err != nil {
			return nil, err
		}
		delta := map[lineKey]*StatementLine{}
		add := func(l StatementLine, sign int64) {
			d, ok := delta[l.key()]
			if !ok {
				c := l
				c.Requests, c.PromptTokens, c.CompletionTokens, c.TotalTokens, c.InstanceSeconds, c.CostMicros = 0, 0, 0, 0, 0, 0
				d = &c
				delta[l.key()] = d
			}
			if sign > 0 {
				// The live line names the service as it is now.
				d.OwnerID, d.ServiceName, d.BillingMethod = l.OwnerID, l.ServiceName, l.BillingMethod
			}
			d.Requests += sign * l.Requests
			d.PromptTokens += sign * l.PromptTokens
			d.CompletionTokens += sign * l.CompletionTokens
			d.TotalTokens += sign * l.TotalTokens
			d.InstanceSeconds += sign * l.InstanceSeconds
			d.CostMicros += sign * l.CostMicros
		}
		for _, l := range live {
			add(l, 1)
		}
		for _, l := range billed {
			if l.ForPeriod == q {
				add(l, -1)
			}
		}
		for _, d := range delta {
			if d.zero() {
				continue
			}
			d.Period, d.Kind, d.ForPeriod = p, LineAdjustment, q
			lines = append(lines, *d)
		}
	}
	slices.SortFunc(lines, func(a, b StatementLine) int {
		return cmp.Or(strings.Compare(a.ServiceID, b.ServiceID), compareLines(a, b))
	})
	return lines, nil
}

// periodUsage bills every service's usage in p as of now: token lines per
// service, API key and base model, and one instance-time line per
// service.
func (s *Service) periodUsage(ctx context.Context, schedule *Schedule, p Period, now time.Time) ([]StatementLine, error) {
	from, to := p.Start(), p.End()
	if !now.After(from) {
		return nil, nil
	}
	tokens, err := s.store.TokenUsage(ctx, TokenQuery{From: from, To: to, By: Grouping{Service: true, APIKey: true, BaseModel: true}, Rates: schedule.TokenRates()})
	if err != nil {
		return nil, err
	}
	lcs, err := s.store.Lifecycles(ctx, from, to)
	if err != nil {
		return nil, err
	}
	known := map[string]state.Service{}
	lookup := func(id string) (state.Service, error) {
		if svc, ok := known[id]; ok {
			return svc, nil
		}
		svc, err := s.services.Service(ctx, id)
		switch {
		case errs.KindOf(err) == errs.NotFound:
			svc = state.Service{ID: id, BillingMethod: UnknownBillingMethod}
		case err != nil:
			return state.Service{}, fmt.Errorf("service %s: %w", id, err)
		}
		known[id] = svc
		return svc, nil
	}
	var out []StatementLine
	for _, t := range tokens {
		svc, err := lookup(t.ServiceID)
		if err != nil {
			return nil, err
		}
		l := StatementLine{ServiceID: svc.ID, OwnerID: svc.OwnerID, ServiceName: svc.Name, BillingMethod: svc.BillingMethod,
			Part: PartTokens, APIKeyID: t.APIKeyID, BaseModel: t.BaseModel, Requests: int64(t.Requests), PromptTokens: int64(t.PromptTokens),
			CompletionTokens: int64(t.CompletionTokens), TotalTokens: int64(t.PromptTokens + t.CompletionTokens)}
		if svc.BillingMethod == state.BillingPerToken {
			l.CostMicros = int64(t.CostMicros)
		}
		out = append(out, l)
	}
	ids := make([]string, 0, len(lcs))
	for id := range lcs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		lc := lcs[id]
		end := earliest(to, now)
		if !lc.DeletedAt.IsZero() {
			end = earliest(end, lc.DeletedAt.Truncate(time.Second))
		}
		seconds := SecondsByHour(Intervals(lc.Instances), from, end)
		if len(seconds) == 0 {
			continue
		}
		svc, err := lookup(id)
		if err != nil {
			return nil, err
		}
		l := StatementLine{ServiceID: svc.ID, OwnerID: svc.OwnerID, ServiceName: svc.Name, BillingMethod: svc.BillingMethod,
			Part: PartInstanceTime, BaseModel: svc.BaseModel}
		for hour, secs := range seconds {
			l.InstanceSeconds += int64(secs)
			if svc.BillingMethod == state.BillingPerInstanceHour {
				l.CostMicros += int64(InstanceCostMicros(secs, schedule.At(svc.BaseModel, state.BillingPerInstanceHour, hour).Price))
			}
		}
		out = append(out, l)
	}
	return out, nil
}
