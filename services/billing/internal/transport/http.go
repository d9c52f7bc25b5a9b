package transport

import (
	"log/slog"
	"net/http"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

// NewHandler returns the usage API, GET /api/v1/usage?service_id=ID,
// behind bearer authentication.
func NewHandler(svc *billing.Service, keys httpx.Verifier, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/usage", func(w http.ResponseWriter, r *http.Request) {
		k, _ := auth.FromContext(r.Context())
		t, err := svc.Totals(r.Context(), k, r.URL.Query().Get("service_id"))
		if err != nil {
			httpx.Fail(w, r, log, err)
			return
		}
		httpx.WriteJSON(w, http.StatusOK, t)
	})
	return httpx.Authenticate(keys)(mux)
}
