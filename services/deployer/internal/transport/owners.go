package transport

import (
	"net/http"

	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
)

// WithOwners adds the users and organisations API: POST and GET
// /api/v1/owners and POST /api/v1/owners/{id}/keys for admins, and GET
// /api/v1/me for any key.
func WithOwners(o *deploy.Owners) Option {
	return func(h *handler, mux *http.ServeMux) {
		mux.HandleFunc("POST /api/v1/owners", func(w http.ResponseWriter, r *http.Request) {
			var req deploy.OwnerRequest
			if err := httpx.DecodeJSON(r, &req, maxBody); err != nil {
				h.fail(w, r, err)
				return
			}
			created, err := o.Create(r.Context(), caller(r), req)
			if err != nil {
				h.fail(w, r, err)
				return
			}
			w.Header().Set("Location", "/api/v1/owners/"+created.ID)
			httpx.WriteJSON(w, http.StatusCreated, created)
		})
		mux.HandleFunc("GET /api/v1/owners", func(w http.ResponseWriter, r *http.Request) {
			list, err := o.List(r.Context(), caller(r))
			if err != nil {
				h.fail(w, r, err)
				return
			}
			httpx.WriteJSON(w, http.StatusOK, list)
		})
		mux.HandleFunc("POST /api/v1/owners/{id}/keys", func(w http.ResponseWriter, r *http.Request) {
			var req struct {
				Name string `json:"name"`
			}
			if err := httpx.DecodeJSON(r, &req, maxBody); err != nil {
				h.fail(w, r, err)
				return
			}
			k, err := o.CreateKey(r.Context(), caller(r), r.PathValue("id"), req.Name)
			if err != nil {
				h.fail(w, r, err)
				return
			}
			httpx.WriteJSON(w, http.StatusCreated, k)
		})
		mux.HandleFunc("GET /api/v1/me", func(w http.ResponseWriter, r *http.Request) {
			k := caller(r)
			me, err := o.Me(r.Context(), k)
			if err != nil {
				h.fail(w, r, err)
				return
			}
			view := meView{Me: me}
			if k.Admin {
				view.Events = h.events
			}
			httpx.WriteJSON(w, http.StatusOK, view)
		})
	}
}
