package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

// ollamaVersion is what GET /api/version reports.
const ollamaVersion = "0.0.0-modelport-simulator"

// ollama is the part of Ollama's API that runs models: pulling one serves
// it under /v1, copying one serves it under a second name as well, and
// creating one from uploaded blobs serves it too.
type ollama struct {
	sim     *simulator.Server
	created time.Time // every model's modified_at

	mu    sync.Mutex
	blobs map[string]bool // digests uploaded, "sha256:<hex>"
}

func newOllama(sim *simulator.Server) *ollama {
	return &ollama{sim: sim, created: time.Now().UTC(), blobs: map[string]bool{}}
}

func (o *ollama) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("Ollama is running"))
	})
	mux.HandleFunc("GET /api/version", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"version": ollamaVersion})
	})
	mux.HandleFunc("POST /api/pull", o.pull)
	mux.HandleFunc("POST /api/copy", o.copy)
	mux.HandleFunc("HEAD /api/blobs/{digest}", o.hasBlob)
	mux.HandleFunc("POST /api/blobs/{digest}", o.uploadBlob)
	mux.HandleFunc("POST /api/create", o.create)
	mux.HandleFunc("POST /api/show", o.show)
	mux.HandleFunc("DELETE /api/delete", o.delete)
	mux.HandleFunc("GET /api/tags", o.tags)
	mux.Handle("/v1/", o.sim)
	return o.loaded(mux)
}

// loaded answers 503 until the simulated start is over; the OpenAI API
// under /v1 says so itself.
func (o *ollama) loaded(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !o.sim.Ready() {
			writeJSON(w, http.StatusServiceUnavailable, ollamaError{"the simulated ollama is still starting"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ollamaError is Ollama's error body.
type ollamaError struct {
	Error string `json:"error"`
}

// modelRequest names a model as "model" or, in older clients, "name".
type modelRequest struct {
	Model  string `json:"model"`
	Name   string `json:"name"`
	Stream *bool  `json:"stream"`
}

func (m modelRequest) model() string {
	if m.Model != "" {
		return m.Model
	}
	return m.Name
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, ollamaError{"invalid request body: " + err.Error()})
		return false
	}
	return true
}

// pull "downloads" a model at once and serves it under its name. Streamed,
// as by default, the answer is NDJSON; here its only line is the final
// one, {"status":"success"}.
func (o *ollama) pull(w http.ResponseWriter, r *http.Request) {
	var req modelRequest
	if !decode(w, r, &req) {
		return
	}
	name := req.model()
	if name == "" {
		writeJSON(w, http.StatusBadRequest, ollamaError{"model is required"})
		return
	}
	o.sim.AddModel(name, name)
	w.Header().Set("Content-Type", "application/json")
	if req.Stream == nil || *req.Stream {
		w.Header().Set("Content-Type", "application/x-ndjson")
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"status": "success"})
}

// copy serves source under destination too, simulating the same base model.
func (o *ollama) copy(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Source      string `json:"source"`
		Destination string `json:"destination"`
	}
	if !decode(w, r, &req) {
		return
	}
	if req.Source == "" || req.Destination == "" {
		writeJSON(w, http.StatusBadRequest, ollamaError{"source and destination are required"})
		return
	}
	m, ok := o.sim.Model(req.Source)
	if !ok {
		writeJSON(w, http.StatusNotFound, ollamaError{fmt.Sprintf("model %q not found", req.Source)})
		return
	}
	o.sim.AddModel(req.Destination, m.BaseModel)
	w.WriteHeader(http.StatusOK)
}

// hasBlob answers 200 for an uploaded blob, 404 otherwise, as Ollama does.
func (o *ollama) hasBlob(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	ok := o.blobs[r.PathValue("digest")]
	o.mu.Unlock()
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// uploadBlob takes a blob whose content has the digest its path names:
// like Ollama, it refuses one whose content does not. It keeps only the
// digest.
func (o *ollama) uploadBlob(w http.ResponseWriter, r *http.Request) {
	digest := r.PathValue("digest")
	want, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(want) != 64 {
		writeJSON(w, http.StatusBadRequest, ollamaError{fmt.Sprintf("invalid digest %q", digest)})
		return
	}
	h := sha256.New()
	if _, err := io.Copy(h, r.Body); err != nil {
		writeJSON(w, http.StatusBadRequest, ollamaError{"read blob: " + err.Error()})
		return
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		writeJSON(w, http.StatusBadRequest, ollamaError{fmt.Sprintf("digest mismatch, expected %q, got %q", want, got)})
		return
	}
	o.mu.Lock()
	o.blobs[digest] = true
	o.mu.Unlock()
	w.WriteHeader(http.StatusCreated)
}

// create makes a model from uploaded blobs ("files"), or from a model it
// serves ("from"), with an optional uploaded adapter, and serves it under
// its name. The simulated model is named after its first file's digest or
// the model it comes from.
func (o *ollama) create(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Model    string            `json:"model"`
		From     string            `json:"from"`
		Files    map[string]string `json:"files"`
		Adapters map[string]string `json:"adapters"`
	}
	if !decode(w, r, &req) {
		return
	}
	if req.Model == "" || (req.From == "") == (len(req.Files) == 0) {
		writeJSON(w, http.StatusBadRequest, ollamaError{"model and either from or files are required"})
		return
	}
	o.mu.Lock()
	var missing []string
	for _, set := range []map[string]string{req.Files, req.Adapters} {
		for name, digest := range set {
			if !o.blobs[digest] {
				missing = append(missing, name+" ("+digest+")")
			}
		}
	}
	o.mu.Unlock()
	if len(missing) > 0 {
		slices.Sort(missing)
		writeJSON(w, http.StatusBadRequest, ollamaError{"blobs not uploaded: " + strings.Join(missing, ", ")})
		return
	}
	base := req.From
	if base != "" {
		m, ok := o.sim.Model(req.From)
		if !ok {
			writeJSON(w, http.StatusNotFound, ollamaError{fmt.Sprintf("model %q not found", req.From)})
			return
		}
		base = m.BaseModel
	} else {
		names := slices.Sorted(maps.Keys(req.Files))
		base = req.Files[names[0]]
	}
	o.sim.AddModel(req.Model, base)
	writeJSON(w, http.StatusOK, map[string]string{"status": "success"})
}

func (o *ollama) delete(w http.ResponseWriter, r *http.Request) {
	var req modelRequest
	if !decode(w, r, &req) {
		return
	}
	if !o.sim.RemoveModel(req.model()) {
		writeJSON(w, http.StatusNotFound, ollamaError{fmt.Sprintf("model %q not found", req.model())})
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (o *ollama) show(w http.ResponseWriter, r *http.Request) {
	var req modelRequest
	if !decode(w, r, &req) {
		return
	}
	m, ok := o.sim.Model(req.model())
	if !ok {
		writeJSON(w, http.StatusNotFound, ollamaError{fmt.Sprintf("model %q not found", req.model())})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"modelfile":    "# simulated by the Modelport simulator engine for " + m.BaseModel,
		"parameters":   "",
		"template":     "{{ .Prompt }}",
		"details":      o.details(),
		"model_info":   map[string]any{},
		"capabilities": []string{"completion"},
		"modified_at":  o.created,
	})
}

func (o *ollama) details() map[string]any {
	return map[string]any{"format": "simulated", "family": "simulated", "families": []string{"simulated"}, "parameter_size": "", "quantization_level": ""}
}

func (o *ollama) tags(w http.ResponseWriter, _ *http.Request) {
	models := []map[string]any{}
	for _, m := range o.sim.Models() {
		sum := sha256.Sum256([]byte(m.BaseModel))
		models = append(models, map[string]any{
			"name": m.Name, "model": m.Name, "modified_at": o.created, "size": 0,
			"digest": hex.EncodeToString(sum[:]), "details": o.details(),
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{"models": models})
}
