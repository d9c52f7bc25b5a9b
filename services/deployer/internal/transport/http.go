// Package transport exposes the deployer: the control API over HTTP and
// the instance events it follows over JetStream.
package transport

import (
	"log/slog"
	"net/http"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
)

// maxBody bounds control API request bodies.
const maxBody = 1 << 20

// NewHandler returns the control API, /api/v1/catalog and
// /api/v1/services..., behind bearer authentication. Lists are bare JSON
// arrays.
func NewHandler(m *deploy.Manager, keys httpx.Verifier, log *slog.Logger) http.Handler {
	h := &handler{m: m, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/catalog", h.catalog)
	mux.HandleFunc("POST /api/v1/services", h.create)
	mux.HandleFunc("GET /api/v1/services", h.list)
	mux.HandleFunc("GET /api/v1/services/{id}", h.get)
	mux.HandleFunc("GET /api/v1/services/{id}/instances", h.instances)
	mux.HandleFunc("/api/v1/", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, errs.E(errs.NotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
	return httpx.Authenticate(keys)(mux)
}

type handler struct {
	m   *deploy.Manager
	log *slog.Logger
}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	httpx.Fail(w, r, h.log, err)
}

func caller(r *http.Request) auth.Key {
	k, _ := auth.FromContext(r.Context())
	return k
}

func (h *handler) catalog(w http.ResponseWriter, _ *http.Request) {
	httpx.WriteJSON(w, http.StatusOK, h.m.Catalog())
}

func (h *handler) create(w http.ResponseWriter, r *http.Request) {
	var req deploy.CreateRequest
	if err := httpx.DecodeJSON(r, &req, maxBody); err != nil {
		h.fail(w, r, err)
		return
	}
	s, err := h.m.Create(r.Context(), caller(r), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/services/"+s.ID)
	httpx.WriteJSON(w, http.StatusCreated, s)
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	list, err := h.m.List(r.Context(), caller(r))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, list)
}

func (h *handler) get(w http.ResponseWriter, r *http.Request) {
	s, err := h.m.Get(r.Context(), caller(r), r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, s)
}

func (h *handler) instances(w http.ResponseWriter, r *http.Request) {
	list, err := h.m.Instances(r.Context(), caller(r), r.PathValue("id"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, list)
}
