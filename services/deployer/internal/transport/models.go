package transport

import (
	"net/http"

	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/services/deployer/internal/models"
)

// WithModels adds the model registry: POST and GET /api/v1/models, GET
// and DELETE /api/v1/models/{name}; and has GET /api/v1/catalog list
// the caller's models too, not the operator's catalog alone.
func WithModels(reg *models.Registry) Option {
	return func(h *handler, mux *http.ServeMux) {
		h.models = reg
		mux.HandleFunc("POST /api/v1/models", func(w http.ResponseWriter, r *http.Request) {
			var req models.Request
			if err := httpx.DecodeJSON(r, &req, maxBody); err != nil {
				h.fail(w, r, err)
				return
			}
			m, err := reg.Register(r.Context(), caller(r), req)
			if err != nil {
				h.fail(w, r, err)
				return
			}
			w.Header().Set("Location", "/api/v1/models/"+m.Name)
			httpx.WriteJSON(w, http.StatusCreated, m)
		})
		mux.HandleFunc("GET /api/v1/models", func(w http.ResponseWriter, r *http.Request) {
			list, err := reg.List(r.Context(), caller(r))
			if err != nil {
				h.fail(w, r, err)
				return
			}
			httpx.WriteJSON(w, http.StatusOK, list)
		})
		mux.HandleFunc("GET /api/v1/models/{name}", func(w http.ResponseWriter, r *http.Request) {
			m, err := reg.Get(r.Context(), caller(r), r.PathValue("name"))
			if err != nil {
				h.fail(w, r, err)
				return
			}
			httpx.WriteJSON(w, http.StatusOK, m)
		})
		mux.HandleFunc("DELETE /api/v1/models/{name}", func(w http.ResponseWriter, r *http.Request) {
			if _, err := reg.Delete(r.Context(), caller(r), r.PathValue("name")); err != nil {
				h.fail(w, r, err)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		})
	}
}
