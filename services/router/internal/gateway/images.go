package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
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
// baseURL, which is empty when the router has no address to give for the
// request (such answers are then refused). Requests are metered as chat
// completions are, their client gone or their answer too large included.
func (g *Gateway) GenerateImages(ctx context.Context, c Call, images ImageSaver, baseURL string) ([]byte, error) {
	started := time.Now().UTC()
	if err := g.hold(&c); err != nil {
		return nil, err
	}
	defer c.Hold.Release()
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
	if format == "url" && baseURL == "" {
		return nil, errs.InvalidParam("response_format", "this router does not serve image URLs for the address this request was sent to (set MODELPORT_PUBLIC_URL, or list the host in MODELPORT_ALLOWED_HOSTS); ask for response_format b64_json")
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
	body, c.Body = nil, nil
	const endpoint = "/v1/images/generations"
	prompt := Usage{PromptTokens: countTokens(*p.Prompt)}
	req := newPayload(upBody, nil)
	upBody = nil
	up, err := g.forward(ctx, svc, "/images/generations", req, routing.Request{})
	if err != nil {
		var sent *sentError
		if errors.As(err, &sent) {
			g.meterGone(ctx, c, svc, sent.instance, endpoint, prompt, started)
			return nil, sent.err
		}
		g.observeFailure(svc, endpoint, err, started)
		return nil, err
	}
	defer up.close()
	if up.status != 200 {
		b, _ := readLimited(up.body, 1<<20)
		err := engineError(up.status, b)
		g.observeFailure(svc, endpoint, err, started)
		return nil, err
	}
	b, tail, err := readAnswer(up.body, maxAnswer)
	switch {
	case ctx.Err() != nil:
		g.meterGone(ctx, c, svc, up.instance, endpoint, prompt, started)
		return nil, ctx.Err()
	case errors.Is(err, errTooLarge):
		u, ok := imageUsageIn(tail)
		if !ok {
			u = prompt
		}
		if err := g.meter(ctx, c, svc, up.instance, endpoint, 413, u, started); err != nil {
			return nil, err
		}
		return nil, errs.E(errs.TooLarge, "the engine's images are larger than the %d bytes the router delivers; ask for fewer or smaller images", maxAnswer)
	case up.idled():
		up.fail()
		err := errs.E(errs.Timeout, "the engine stopped sending its images for %s", g.IdleTimeout)
		g.observeFailure(svc, endpoint, err, started)
		return nil, err
	case err != nil:
		up.fail()
		err := errs.Wrap(errs.Upstream, err, "read the engine's images")
		g.observeFailure(svc, endpoint, err, started)
		return nil, err
	}
	var whole map[string]json.RawMessage
	var data []map[string]json.RawMessage
	if json.Unmarshal(b, &whole) != nil || json.Unmarshal(whole["data"], &data) != nil || len(data) == 0 {
		up.fail()
		err := errs.E(errs.Upstream, "the engine's answer has no images")
		g.observeFailure(svc, endpoint, err, started)
		return nil, err
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
	if err := g.meter(ctx, c, svc, up.instance, endpoint, 200, u, started); err != nil {
		return nil, err
	}
	if whole["data"], err = marshal(data); err != nil {
		return nil, err
	}
	return marshal(whole)
}

// imageUsageIn finds the usage of an image generation in the tail of its
// answer.
func imageUsageIn(tail []byte) (Usage, bool) {
	var u *imageUsage
	if !lastMember(tail, "usage", &u) || u == nil {
		return Usage{}, false
	}
	return Usage{PromptTokens: u.InputTokens, CompletionTokens: u.OutputTokens}, true
}
