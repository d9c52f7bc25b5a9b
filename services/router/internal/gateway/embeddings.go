package gateway

import (
	"context"
	"encoding/json"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
)

const embeddingsEndpoint = "/v1/embeddings"

// embeddingParams are the embedding parameters the gateway checks; the
// engine checks the rest, such as whether the model can shorten its
// vectors to dimensions.
type embeddingParams struct {
	Model          string          `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat *string         `json:"encoding_format"`
	Dimensions     *int            `json:"dimensions"`
	User           *string         `json:"user"`
}

// Embeddings answers POST /v1/embeddings for embedding services. The
// input's tokens are billed as prompt tokens; there are no completion
// tokens. The answer is the engine's, with the access name as model.
func (g *Gateway) Embeddings(ctx context.Context, c Call) (*Reply, error) {
	started := time.Now().UTC()
	if err := g.hold(&c); err != nil {
		return nil, err
	}
	defer c.Hold.Release()
	var p embeddingParams
	if err := decodeBody(c.Body, &p); err != nil {
		return nil, err
	}
	if p.Model == "" {
		return nil, errs.InvalidParam("model", "model is required: the service's access name, such as u-<owner>/<name>")
	}
	input, err := readTextInput(p.Input, "input")
	if err != nil {
		return nil, err
	}
	for _, s := range input.texts {
		if s == "" {
			return nil, errs.InvalidParam("input", "input must not hold empty strings")
		}
	}
	if f := p.EncodingFormat; f != nil && *f != "float" && *f != "base64" {
		return nil, errs.InvalidParam("encoding_format", "encoding_format must be float or base64, not %q", *f)
	}
	if p.Dimensions != nil && *p.Dimensions < 1 {
		return nil, errs.InvalidParam("dimensions", "dimensions must be at least 1")
	}
	svc, err := g.service(c.Caller, p.Model)
	if err != nil {
		return nil, err
	}
	if svc.Task != state.TaskEmbedding {
		return nil, errs.InvalidParam("model", "%s is a %s service and does not serve %s; deploy a model with the embedding task", svc.AccessName, svc.Task, embeddingsEndpoint)
	}
	if err := g.admit(c, svc); err != nil {
		return nil, err
	}
	body := c.Body
	c.Body = nil
	return g.relay(ctx, c, svc, started, exchange{
		endpoint: embeddingsEndpoint, path: "/embeddings", body: body, prompt: input,
		rewrite: func(b []byte, _, model string) ([]byte, Usage, error) {
			out, u, err := rewriteAnswer(b, "", model, "a list of embeddings")
			// Whatever an engine says of completion tokens, an embedding
			// has none: its input is billed as prompt tokens.
			u.CompletionTokens, u.TotalTokens = 0, u.PromptTokens
			return out, u, err
		},
	})
}
