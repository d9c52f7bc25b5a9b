package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/routing"
)

// ImageSaver keeps a generated image for download and returns its URL.
type ImageSaver interface {
	Save(ctx context.Context, png []byte, baseURL string) (url string, err error)
}

// imageParams are the image-generation parameters the gateway checks;
// the engine checks the rest.
type imageParams struct {
	Model          string  `json:"model"`
	Prompt         *string `json:"prompt"`
	N              *int    `json:"n"`
	Size           *string `json:"size"`
	ResponseFormat *string `json:"response_format"`
	Quality        *string `json:"quality"`
	Style          *string `json:"style"`
	User           *string `json:"user"`
}

// imageUsage is the usage object of an image generation.
type imageUsage struct {
	InputTokens  int `json:"input_tokens"`
	OutputTokens int `json:"output_tokens"`
}

// GenerateImages answers POST /v1/images/generations. Engines always
// return base64 PNGs; where the client asks for URLs (the default, as in
// the OpenAI API), the gateway stores the images and links them under
// baseURL.
func (g *Gateway) GenerateImages(ctx context.Context, c Call, images ImageSaver, baseURL string) ([]byte, error) {
	started := time.Now().UTC()
	var p imageParams
	if err := decodeBody(c.Body, &p); err != nil {
		return nil, err
	}
	if p.Model == "" {
		return nil, errs.InvalidParam("model", "model is required: the service's access name")
	}
	if p.Prompt == nil || *p.Prompt == "" {
		return nil, errs.InvalidParam("prompt", "prompt is required")
	}
	format := "url"
	if p.ResponseFormat != nil {
		format = *p.ResponseFormat
	}
	if format != "url" && format != "b64_json" {
		return nil, errs.InvalidParam("response_format", "response_format must be url or b64_json")
	}
	svc, err := g.service(c.Caller, p.Model)
	if err != nil {
		return nil, err
	}
	if svc.Task != state.TaskImageGeneration {
		return nil, errs.InvalidParam("model", "%s is a %s service; image generation needs an image-generation service", svc.AccessName, svc.Task)
	}
	if err := g.admit(c, svc); err != nil {
		return nil, err
	}
	var body map[string]json.RawMessage
	if err := json.Unmarshal(c.Body, &body); err != nil {
		return nil, errs.E(errs.Invalid, "request body is not a JSON object")
	}
	body["response_format"] = json.RawMessage(`"b64_json"`)
	upBody, err := marshal(body)
	if err != nil {
		return nil, err
	}
	up, err := g.forward(ctx, svc, "/images/generations", upBody, routing.Request{})
	if err != nil {
		g.observeFailure(svc, "/v1/images/generations", err, started)
		return nil, err
	}
	defer up.close()
	if up.status != 200 {
		b, _ := readLimited(up.body, 1<<20)
		err := engineError(up.status, b)
		g.observeFailure(svc, "/v1/images/generations", err, started)
		return nil, err
	}
	b, err := readLimited(up.body, maxAnswer)
	if err != nil {
		return nil, errs.Wrap(errs.Upstream, err, "read the engine's images")
	}
	var whole map[string]json.RawMessage
	var data []map[string]json.RawMessage
	if json.Unmarshal(b, &whole) != nil || json.Unmarshal(whole["data"], &data) != nil || len(data) == 0 {
		up.fail()
		return nil, errs.E(errs.Upstream, "the engine's answer has no images")
	}
	if format == "url" {
		for _, d := range data {
			var b64 string
			if err := json.Unmarshal(d["b64_json"], &b64); err != nil {
				return nil, errs.E(errs.Upstream, "the engine sent an image without b64_json")
			}
			png, err := base64.StdEncoding.DecodeString(b64)
			if err != nil {
				return nil, errs.Wrap(errs.Upstream, err, "the engine sent an image that is not base64")
			}
			url, err := images.Save(ctx, png, baseURL)
			if err != nil {
				return nil, err
			}
			delete(d, "b64_json")
			d["url"], _ = marshal(url)
		}
	}
	var u Usage
	var iu *imageUsage
	if json.Unmarshal(whole["usage"], &iu) == nil && iu != nil {
		u = Usage{PromptTokens: iu.InputTokens, CompletionTokens: iu.OutputTokens}
	}
	if err := g.meter(ctx, c, svc, up.instance, "/v1/images/generations", 200, u, started); err != nil {
		return nil, err
	}
	if whole["data"], err = marshal(data); err != nil {
		return nil, err
	}
	return marshal(whole)
}
