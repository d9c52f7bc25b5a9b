package transport

import (
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	kithttp "github.com/go-kit/kit/transport/http"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// DeadLetterLimit is how many dead letters the report lists at most.
const DeadLetterLimit = 100

// NewHandler returns billing's API over HTTP, behind bearer
// authentication:
//
//	GET  /api/v1/usage?service_id=&from=&to=&group_by=  usage and cost, JSON
//	GET  /api/v1/usage/export.csv?(the same)              the same as CSV
//	GET  /api/v1/usage/deadletters                        rejected events (admins)
//	GET  /api/v1/statements?period=2026-11                the period's statements, JSON
//	GET  /api/v1/statements/export.csv?period=2026-11     their lines as CSV
//	GET  /api/v1/periods                                  closed periods
//	POST /api/v1/periods/{period}/close                   close a period (admins)
//	GET  /api/v1/prices                                   the price schedule
//	POST /api/v1/prices                                   add prices (admins)
func NewHandler(svc *billing.Service, dead *DeadLetters, keys httpx.Verifier, log *slog.Logger) http.Handler {
	e := MakeEndpoints(svc, dead)
	opts := []kithttp.ServerOption{
		kithttp.ServerErrorEncoder(func(_ context.Context, err error, w http.ResponseWriter) { httpx.WriteError(w, err) }),
		kithttp.ServerErrorHandler(logInternal{log}),
	}
	mux := http.NewServeMux()
	mux.Handle("GET /api/v1/usage", kithttp.NewServer(e.Usage, decodeQuery, encodeJSON, opts...))
	mux.Handle("GET /api/v1/usage/export.csv", kithttp.NewServer(e.Usage, decodeQuery, encodeCSV, opts...))
	mux.Handle("GET /api/v1/usage/deadletters", kithttp.NewServer(e.DeadLetters, kithttp.NopRequestDecoder, encodeJSON, opts...))
	mux.Handle("GET /api/v1/statements", kithttp.NewServer(e.Statements, decodePeriodParam, encodeJSON, opts...))
	mux.Handle("GET /api/v1/statements/export.csv", kithttp.NewServer(e.Statements, decodePeriodParam, encodeStatementsCSV, opts...))
	mux.Handle("GET /api/v1/periods", kithttp.NewServer(e.Periods, kithttp.NopRequestDecoder, encodeJSON, opts...))
	mux.Handle("POST /api/v1/periods/{period}/close", kithttp.NewServer(e.ClosePeriod, decodePeriodPath, encodeJSON, opts...))
	mux.Handle("GET /api/v1/prices", kithttp.NewServer(e.Prices, kithttp.NopRequestDecoder, encodeJSON, opts...))
	mux.Handle("POST /api/v1/prices", kithttp.NewServer(e.ChangePrices, decodePrices, encodeJSON, opts...))
	return httpx.Authenticate(keys)(mux)
}

// logInternal logs the errors that are the platform's fault; the client's
// own mistakes are in its answer.
type logInternal struct{ log *slog.Logger }

func (l logInternal) Handle(ctx context.Context, err error) {
	if errs.KindOf(err) == errs.Internal || errs.KindOf(err) == errs.Unavailable {
		l.log.ErrorContext(ctx, "billing API call failed", "err", err)
	}
}

// decodeQuery reads a usage query from the URL.
func decodeQuery(_ context.Context, r *http.Request) (any, error) {
	p := r.URL.Query()
	return billing.ParseQuery(p.Get("service_id"), p.Get("from"), p.Get("to"), p.Get("group_by"))
}

// decodePeriodParam reads ?period=2026-11.
func decodePeriodParam(_ context.Context, r *http.Request) (any, error) {
	return billing.ParsePeriod(r.URL.Query().Get("period"))
}

// decodePeriodPath reads the period from the path.
func decodePeriodPath(_ context.Context, r *http.Request) (any, error) {
	return billing.ParsePeriod(r.PathValue("period"))
}

// PriceChange is the body of POST /api/v1/prices: entries to add, each a
// price with its valid_from.
type PriceChange struct {
	Prices []struct {
		billing.Price
		ValidFrom *time.Time `json:"valid_from"`
		Dropped   bool       `json:"dropped"`
	} `json:"prices"`
}

// maxPriceBody bounds a price change's body.
const maxPriceBody = 1 << 20

func decodePrices(_ context.Context, r *http.Request) (any, error) {
	var body PriceChange
	if err := httpx.DecodeJSON(r, &body, maxPriceBody); err != nil {
		return nil, err
	}
	var out []billing.PriceEntry
	for i, p := range body.Prices {
		if p.ValidFrom == nil {
			return nil, errs.InvalidParam(fmt.Sprintf("prices[%d].valid_from", i), "every price needs a valid_from: a whole UTC hour after now")
		}
		out = append(out, billing.PriceEntry{Price: p.Price, ValidFrom: p.ValidFrom.UTC(), Dropped: p.Dropped})
	}
	return out, nil
}

func encodeJSON(_ context.Context, w http.ResponseWriter, resp any) error {
	httpx.WriteJSON(w, http.StatusOK, resp)
	return nil
}

// encodeCSV writes a usage answer as a CSV download.
func encodeCSV(_ context.Context, w http.ResponseWriter, resp any) error {
	u := resp.(billing.Usage)
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="usage-%s-%s-%s.csv"`,
		u.ServiceID, u.From.Format("20060102T15"), u.To.Format("20060102T15")))
	return writeCSV(w, u)
}

// csvHeader is the export's columns. Every row has a period: an hour or a
// day when grouped by time, the whole window otherwise.
var csvHeader = []string{"service_id", "period_start", "period_end", "api_key_id", "requests", "prompt_tokens",
	"completion_tokens", "total_tokens", "instance_seconds", "cost_micros", "cost_usd", "currency"}

// writeCSV writes u's rows, or its totals as one row when it is not
// grouped. Nothing is summed twice: there is no totals row under rows.
func writeCSV(w io.Writer, u billing.Usage) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return err
	}
	rows := u.Data
	if u.GroupBy == "" {
		rows = []billing.Row{{Requests: u.Requests, PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens,
			TotalTokens: u.TotalTokens, InstanceSeconds: u.InstanceSeconds, CostMicros: u.CostMicros}}
	}
	for _, r := range rows {
		start, end := u.From, u.To
		switch u.GroupBy {
		case billing.GroupHour:
			start, end = r.PeriodStart, r.PeriodStart.Add(time.Hour)
		case billing.GroupDay:
			start, end = r.PeriodStart, r.PeriodStart.Add(24*time.Hour)
		}
		rec := []string{cell(u.ServiceID), start.Format(time.RFC3339), end.Format(time.RFC3339), cell(r.APIKeyID),
			strconv.FormatUint(r.Requests, 10), strconv.FormatUint(r.PromptTokens, 10),
			strconv.FormatUint(r.CompletionTokens, 10), strconv.FormatUint(r.TotalTokens, 10),
			strconv.FormatUint(r.InstanceSeconds, 10), strconv.FormatUint(r.CostMicros, 10), usd(int64(r.CostMicros)), u.Currency}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// encodeStatementsCSV writes a period's statement lines as a CSV
// download: one row per line, never a totals row.
func encodeStatementsCSV(_ context.Context, w http.ResponseWriter, resp any) error {
	st := resp.(billing.Statements)
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="statements-%s-%s.csv"`, st.Period, st.Status))
	return writeStatementsCSV(w, st)
}

// statementsCSVHeader is the statements export's columns.
var statementsCSVHeader = []string{"period", "status", "service_id", "owner_id", "service_name", "billing_method", "kind",
	"for_period", "part", "api_key_id", "base_model", "requests", "prompt_tokens", "completion_tokens", "total_tokens",
	"instance_seconds", "cost_micros", "cost_usd", "currency"}

func writeStatementsCSV(w io.Writer, st billing.Statements) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(statementsCSVHeader); err != nil {
		return err
	}
	for _, s := range st.Data {
		for _, l := range s.Lines {
			rec := []string{st.Period.String(), st.Status, cell(s.ServiceID), cell(s.OwnerID), cell(s.ServiceName), cell(s.BillingMethod),
				l.Kind, l.ForPeriod.String(), l.Part, cell(l.APIKeyID), cell(l.BaseModel),
				strconv.FormatInt(l.Requests, 10), strconv.FormatInt(l.PromptTokens, 10), strconv.FormatInt(l.CompletionTokens, 10),
				strconv.FormatInt(l.TotalTokens, 10), strconv.FormatInt(l.InstanceSeconds, 10), strconv.FormatInt(l.CostMicros, 10),
				usd(l.CostMicros), st.Currency}
			if err := cw.Write(rec); err != nil {
				return err
			}
		}
	}
	cw.Flush()
	return cw.Error()
}

// cell returns s safe to open in a spreadsheet: a cell that starts with
// a character a spreadsheet reads as the start of a formula (= + - @, tab,
// carriage return) gets a leading apostrophe, which spreadsheets take as
// "text" and do not show. Event payloads supply some of these strings.
func cell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}

// usd formats signed micro-USD as a decimal with six places, without
// floats.
func usd(micros int64) string {
	sign := ""
	u := uint64(micros)
	if micros < 0 {
		sign, u = "-", uint64(-micros)
	}
	return fmt.Sprintf("%s%d.%06d", sign, u/1_000_000, u%1_000_000)
}

// priceSchedule is how GET /api/v1/prices shows the schedule.
type priceSchedule struct {
	Revision uint64               `json:"revision"`
	Currency string               `json:"currency"`
	Data     []billing.PriceEntry `json:"data"`
}

// closingList is how GET /api/v1/periods lists closed periods.
type closingList struct {
	Data []billing.Closing `json:"data"`
}
