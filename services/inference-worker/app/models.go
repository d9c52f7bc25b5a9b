package app

import (
	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/services/inference-worker/internal/engine"
	"github.com/modelport/modelport/services/inference-worker/internal/worker"
)

// modelSpecs completes the spec of a placement that carries its model. A
// catalog model still comes from this worker's catalog, whose paths are
// this machine's; a registered one needs no catalog: its source URI
// becomes what the engine takes (a path, a repository ID, an Ollama tag).
func modelSpecs(cat *catalog.Catalog, cfg Config) worker.ModelFunc {
	fromCatalog := specs(cat, cfg)
	return func(spec engine.Spec, m events.ModelSpec) (engine.Spec, error) {
		if m.Owner == "catalog" {
			return fromCatalog(spec)
		}
		src, err := engineSource(m.Source)
		if err != nil {
			return spec, errs.E(errs.Invalid, "model %s: %v", m.Name, err)
		}
		spec.Source, spec.ContextLength, spec.GPUs = src, m.ContextLength, m.GPUs
		if m.Adapter != "" {
			a, err := engineSource(m.Adapter)
			if err != nil {
				return spec, errs.E(errs.Invalid, "model %s: adapter: %v", m.Name, err)
			}
			spec.Adapter = engine.LoRA{Name: spec.ServedName, Path: a}
		}
		return runsOn(spec, m.Engine, cfg), nil
	}
}

// engineSource turns a source URI into what the engine adapters take.
func engineSource(uri string) (string, error) {
	src, err := catalog.ParseSource(uri)
	if err != nil {
		return "", err
	}
	return src.EngineSource()
}
