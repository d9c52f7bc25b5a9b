package transport

import (
	"context"
	"encoding/csv"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	kithttp "github.com/go-kit/kit/transport/http"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// DeadLetterLimit is how many dead letters the report lists at most.
const DeadLetterLimit = 100

// NewHandler returns the usage API over HTTP, behind bearer
// authentication:
//
//	GET /api/v1/usage?service_id=&from=&to=&group_by=   usage and cost, JSON
//	GET /api/v1/usage/export.csv?(the same)               the same as CSV
//	GET /api/v1/usage/deadletters                        rejected events (admins)
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
	return httpx.Authenticate(keys)(mux)
}

// logInternal logs the errors that are the platform's fault; the client's
// own mistakes are in its answer.
type logInternal struct{ log *slog.Logger }

func (l logInternal) Handle(ctx context.Context, err error) {
	if errs.KindOf(err) == errs.Internal || errs.KindOf(err) == errs.Unavailable {
		l.log.ErrorContext(ctx, "usage API call failed", "err", err)
	}
}

// decodeQuery reads a usage query from the URL.
func decodeQuery(_ context.Context, r *http.Request) (any, error) {
	p := r.URL.Query()
	return billing.ParseQuery(p.Get("service_id"), p.Get("from"), p.Get("to"), p.Get("group_by"))
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
func writeCSV(w http.ResponseWriter, u billing.Usage) error {
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
		rec := []string{u.ServiceID, start.Format(time.RFC3339), end.Format(time.RFC3339), r.APIKeyID,
			strconv.FormatUint(r.Requests, 10), strconv.FormatUint(r.PromptTokens, 10),
			strconv.FormatUint(r.CompletionTokens, 10), strconv.FormatUint(r.TotalTokens, 10),
			strconv.FormatUint(r.InstanceSeconds, 10), strconv.FormatUint(r.CostMicros, 10), usd(r.CostMicros), u.Currency}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// usd formats micro-USD as a decimal with six places, without floats.
func usd(micros uint64) string { return fmt.Sprintf("%d.%06d", micros/1_000_000, micros%1_000_000) }
