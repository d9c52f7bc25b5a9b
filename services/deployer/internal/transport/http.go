// Package transport exposes the deployer: the control API over HTTP and
// the instance events it follows over JetStream.
package transport

import (
	"bytes"
	"cmp"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/deploy"
	"github.com/modelport/modelport/services/deployer/internal/models"
)

// maxBody bounds control API request bodies.
const maxBody = 1 << 20

// NewHandler returns the control API, /api/v1/catalog, /api/v1/services...
// and /api/v1/keys..., behind bearer authentication. Lists are bare JSON
// arrays; a services page with more after it says where in a Link header.
// A create with an Idempotency-Key header goes through idem, so a retry
// returns the first result with Idempotent-Replayed: true. Options add
// routes, such as WithLive's watch stream.
func NewHandler(m *deploy.Manager, idem *deploy.Idempotent, ks *deploy.Keys, keys httpx.Verifier, log *slog.Logger, opts ...Option) http.Handler {
	h := &handler{m: m, idem: idem, ks: ks, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/catalog", h.catalog)
	mux.HandleFunc("POST /api/v1/services", h.create)
	mux.HandleFunc("GET /api/v1/services", h.list)
	mux.HandleFunc("GET /api/v1/services/{id}", h.get)
	mux.HandleFunc("DELETE /api/v1/services/{id}", h.delete)
	mux.HandleFunc("POST /api/v1/services/{id}/scale", h.scale)
	mux.HandleFunc("PUT /api/v1/services/{id}/autoscale", h.setAutoscale)
	mux.HandleFunc("DELETE /api/v1/services/{id}/autoscale", h.removeAutoscale)
	mux.HandleFunc("PUT /api/v1/services/{id}/routing", h.setRouting)
	mux.HandleFunc("GET /api/v1/services/{id}/instances", h.instances)
	mux.HandleFunc("POST /api/v1/keys", h.createKey)
	mux.HandleFunc("GET /api/v1/keys", h.listKeys)
	mux.HandleFunc("DELETE /api/v1/keys/{id}", h.revokeKey)
	for _, o := range opts {
		o(h, mux)
	}
	mux.HandleFunc("/api/v1/", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, errs.E(errs.NotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
	return httpx.Authenticate(keys)(mux)
}

type handler struct {
	m      *deploy.Manager
	idem   *deploy.Idempotent
	ks     *deploy.Keys
	models *models.Registry // set by WithModels
	log    *slog.Logger
	events *EventStream // nil: the platform does not say where its events are
}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	httpx.Fail(w, r, h.log, err)
}

func caller(r *http.Request) auth.Key {
	k, _ := auth.FromContext(r.Context())
	return k
}

// catalog lists what the caller may deploy: with the model registry, the
// same list as GET /api/v1/models; without it, the operator's catalog.
func (h *handler) catalog(w http.ResponseWriter, r *http.Request) {
	if h.models == nil {
		httpx.WriteJSON(w, http.StatusOK, h.m.Catalog())
		return
	}
	list, err := h.models.List(r.Context(), caller(r))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, list)
}

func (h *handler) create(w http.ResponseWriter, r *http.Request) {
	var req deploy.CreateRequest
	if err := httpx.DecodeJSON(r, &req, maxBody); err != nil {
		h.fail(w, r, err)
		return
	}
	var (
		s        state.Service
		replayed bool
		err      error
	)
	if key := r.Header.Get("Idempotency-Key"); key != "" {
		s, replayed, err = h.idem.Create(r.Context(), caller(r), key, req)
	} else {
		s, err = h.m.Create(r.Context(), caller(r), req)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	w.Header().Set("Location", "/api/v1/services/"+s.ID)
	httpx.WriteJSON(w, http.StatusCreated, s)
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	opts := deploy.ListOptions{Status: q.Get("status"), Task: q.Get("task"), After: q.Get("after")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			h.fail(w, r, errs.InvalidParam("limit", "limit must be a whole number"))
			return
		}
		if n == 0 {
			n = -1 // an explicit 0 is out of range, not the default
		}
		opts.Limit = n
	}
	page, more, err := h.m.List(r.Context(), caller(r), opts)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if more {
		next := url.Values{"after": {page[len(page)-1].ID}, "limit": {strconv.Itoa(cmp.Or(opts.Limit, deploy.DefaultLimit))}}
		if opts.Status != "" {
			next.Set("status", opts.Status)
		}
		if opts.Task != "" {
			next.Set("task", opts.Task)
		}
		w.Header().Set("Link", "</api/v1/services?"+next.Encode()+`>; rel="next"`)
	}
	httpx.WriteJSON(w, http.StatusOK, page)
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

func (h *handler) scale(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Instances *int `json:"instances"`
	}
	if err := httpx.DecodeJSON(r, &req, maxBody); err != nil {
		h.fail(w, r, err)
		return
	}
	if req.Instances == nil {
		h.fail(w, r, errs.InvalidParam("instances", "instances is required"))
		return
	}
	s, err := h.m.Scale(r.Context(), caller(r), r.PathValue("id"), *req.Instances)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, s)
}

// setRouting sets a service's routing policy: {"policy": "..."}.
func (h *handler) setRouting(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Policy *string `json:"policy"`
	}
	if err := httpx.DecodeJSON(r, &req, maxBody); err != nil {
		h.fail(w, r, err)
		return
	}
	if req.Policy == nil {
		h.fail(w, r, deploy.ValidateRouting("", "policy"))
		return
	}
	s, err := h.m.SetRouting(r.Context(), caller(r), r.PathValue("id"), *req.Policy)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, s)
}

// setAutoscale sets a service's autoscaling policy. The policy is the
// whole body here, so an error names its field as sent: min_instances,
// not autoscale.min_instances as in a create.
func (h *handler) setAutoscale(w http.ResponseWriter, r *http.Request) {
	var p state.Autoscale
	if err := httpx.DecodeJSON(r, &p, maxBody); err != nil {
		h.fail(w, r, err)
		return
	}
	s, err := h.m.SetAutoscale(r.Context(), caller(r), r.PathValue("id"), &p)
	if e, ok := errs.As(err); ok && strings.HasPrefix(e.Param, "autoscale.") {
		err = errs.InvalidParam(strings.TrimPrefix(e.Param, "autoscale."), "%s", e.Msg)
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, s)
}

// removeAutoscale fixes a service at its current instance count.
func (h *handler) removeAutoscale(w http.ResponseWriter, r *http.Request) {
	s, err := h.m.SetAutoscale(r.Context(), caller(r), r.PathValue("id"), nil)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, s)
}

// delete takes its confirmation from a JSON body; an empty body is a
// missing confirmation, reported as such.
func (h *handler) delete(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ConfirmName string `json:"confirm_name"`
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		h.fail(w, r, errs.E(errs.TooLarge, "request body is larger than %d bytes", maxBody))
		return
	}
	if len(bytes.TrimSpace(b)) > 0 {
		if err := httpx.Unmarshal(b, &req); err != nil {
			h.fail(w, r, err)
			return
		}
	}
	s, err := h.m.Delete(r.Context(), caller(r), r.PathValue("id"), req.ConfirmName)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpx.WriteJSON(w, http.StatusAccepted, s)
}

func (h *handler) createKey(w http.ResponseWriter, r *http.Request) {
	var req deploy.KeyRequest
	if err := httpx.DecodeJSON(r, &req, maxBody); err != nil {
		h.fail(w, r, err)
		return
	}
	k, err := h.ks.Create(r.Context(), caller(r), req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/keys/"+k.ID)
	httpx.WriteJSON(w, http.StatusCreated, k)
}

func (h *handler) listKeys(w http.ResponseWriter, r *http.Request) {
	list, err := h.ks.List(r.Context(), caller(r))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, list)
}

func (h *handler) revokeKey(w http.ResponseWriter, r *http.Request) {
	if err := h.ks.Revoke(r.Context(), caller(r), r.PathValue("id")); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
