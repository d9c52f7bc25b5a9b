// Package gateway is the router's domain: it checks an OpenAI request
// against the caller and the service it names, forwards it to a ready
// instance, and meters the answer.
package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/routing"
)

// Engine sends a request body to an instance's OpenAI base URL. A
// transport failure before any answer is errs.Unavailable, so the gateway
// may try another instance.
type Engine interface {
	Post(ctx context.Context, endpoint, path string, body []byte) (status int, resp []byte, err error)
}

// Publisher publishes usage events.
type Publisher interface {
	Publish(ctx context.Context, ev events.Event) error
}

// Gateway handles OpenAI API calls. It is safe for concurrent use.
type Gateway struct {
	table  *routing.Table
	engine Engine
	pub    Publisher
	log    *slog.Logger
	// ReadyWait bounds how long a request waits for a ready instance.
	ReadyWait time.Duration
}

// New returns a Gateway.
func New(table *routing.Table, engine Engine, pub Publisher, log *slog.Logger) *Gateway {
	return &Gateway{table: table, engine: engine, pub: pub, log: log, ReadyWait: 10 * time.Second}
}

// chatRequest is the part of a chat request the gateway checks; the body
// is forwarded as it came, so every other field reaches the engine.
type chatRequest struct {
	Model    string            `json:"model"`
	Messages []json.RawMessage `json:"messages"`
	Stream   bool              `json:"stream"`
}

// Usage is the OpenAI usage object.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// chatCompletion is the engine's answer: the gateway sets id and model and
// keeps the rest as the engine wrote it.
type chatCompletion struct {
	ID                string            `json:"id"`
	Object            string            `json:"object"`
	Created           int64             `json:"created"`
	Model             string            `json:"model"`
	Choices           []json.RawMessage `json:"choices"`
	Usage             *Usage            `json:"usage"`
	SystemFingerprint string            `json:"system_fingerprint,omitempty"`
}

// ChatCompletion answers POST /v1/chat/completions for caller. It returns
// the response body for the client.
func (g *Gateway) ChatCompletion(ctx context.Context, caller auth.Key, requestID string, body []byte) ([]byte, error) {
	started := time.Now().UTC()
	var req chatRequest
	if err := json.Unmarshal(body, &req); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return nil, errs.InvalidParam(typeErr.Field, "%s has the wrong type: expected %s", typeErr.Field, typeErr.Type.Kind())
		}
		return nil, errs.E(errs.Invalid, "request body is not valid JSON: %v", err)
	}
	if req.Model == "" {
		return nil, errs.InvalidParam("model", "model is required: the service's access name, such as u-<owner>/<name>")
	}
	if len(req.Messages) == 0 {
		return nil, errs.InvalidParam("messages", "messages must be a non-empty array")
	}
	if req.Stream {
		return nil, errs.InvalidParam("stream", "streaming responses are not available yet; send stream: false")
	}
	svc, err := g.service(caller, req.Model)
	if err != nil {
		return nil, err
	}
	if svc.Task == state.TaskImageGeneration {
		return nil, errs.InvalidParam("model", "%s is an image-generation service; use POST /v1/images/generations", svc.AccessName)
	}

	status, resp, inst, err := g.forward(ctx, svc, "/chat/completions", body)
	if err != nil {
		return nil, err
	}
	if status != 200 {
		return nil, engineError(status, resp)
	}
	var cc chatCompletion
	if err := json.Unmarshal(resp, &cc); err != nil {
		return nil, errs.Wrap(errs.Internal, err, "engine answer is not a chat completion")
	}
	if cc.Usage == nil {
		return nil, errs.E(errs.Internal, "engine %s answered without usage", inst.ID)
	}
	cc.ID = "cmp-" + strings.ReplaceAll(uuid.NewString(), "-", "")
	cc.Object = "chat.completion"
	cc.Model = svc.AccessName
	out, err := json.Marshal(cc)
	if err != nil {
		return nil, err
	}
	// Usage is recorded before the client sees the answer, so an answer
	// never goes unbilled; the event ID makes a retried publish count once.
	ev := events.RequestCompletedV1{
		Meta: events.NewMeta(), RequestID: requestID, ServiceID: svc.ID, OwnerID: svc.OwnerID,
		AccessName: svc.AccessName, BaseModel: svc.BaseModel, APIKeyID: caller.ID, InstanceID: inst.ID,
		Endpoint: "/v1/chat/completions", Status: 200,
		PromptTokens: cc.Usage.PromptTokens, CompletionTokens: cc.Usage.CompletionTokens, TotalTokens: cc.Usage.TotalTokens,
		StartedAt: started, FinishedAt: time.Now().UTC(),
	}
	if err := g.pub.Publish(context.WithoutCancel(ctx), ev); err != nil {
		g.log.ErrorContext(ctx, "usage event not recorded", "request_id", requestID, "service_id", svc.ID, "err", err)
		return nil, errs.Wrap(errs.Unavailable, err, "usage could not be recorded; the request was not billed, retry it")
	}
	return out, nil
}

// service resolves an access name for caller. Another owner's service is
// NotFound, not Forbidden, so names do not leak.
func (g *Gateway) service(caller auth.Key, model string) (state.Service, error) {
	svc, ok := g.table.Resolve(model)
	if !ok || (!caller.Admin && svc.OwnerID != caller.OwnerID) {
		return state.Service{}, &errs.Error{Kind: errs.NotFound, Param: "model", Msg: fmt.Sprintf("the model %q does not exist or you do not have access to it", model)}
	}
	return svc, nil
}

// forward sends body to the least-loaded ready instance, waiting up to
// ReadyWait for one, and tries one other instance if the first cannot be
// reached.
func (g *Gateway) forward(ctx context.Context, svc state.Service, path string, body []byte) (int, []byte, state.Instance, error) {
	var tried []string
	deadline := time.Now().Add(g.ReadyWait)
	for {
		ep, release, ok := g.table.Pick(svc.ID, tried...)
		if !ok {
			if len(tried) > 0 || time.Now().After(deadline) {
				return 0, nil, state.Instance{}, errs.E(errs.Unavailable, "service %s has no ready instance; it is %s", svc.AccessName, svc.Status)
			}
			select {
			case <-ctx.Done():
				return 0, nil, state.Instance{}, ctx.Err()
			case <-time.After(50 * time.Millisecond):
				continue
			}
		}
		status, resp, err := g.engine.Post(ctx, ep.Instance.Endpoint, path, body)
		release()
		if err == nil {
			return status, resp, ep.Instance, nil
		}
		if errs.KindOf(err) != errs.Unavailable || len(tried) > 0 {
			return 0, nil, state.Instance{}, err
		}
		g.log.WarnContext(ctx, "instance unreachable, trying another", "instance_id", ep.Instance.ID, "err", err)
		tried = append(tried, ep.Instance.ID)
	}
}

// engineError turns an engine's error answer into an error for the client:
// the engine's message for request errors, a gateway error otherwise.
func engineError(status int, body []byte) error {
	var e struct {
		Error struct {
			Message string  `json:"message"`
			Param   *string `json:"param"`
		} `json:"error"`
	}
	_ = json.Unmarshal(body, &e)
	msg := e.Error.Message
	if msg == "" {
		msg = string(bytes.TrimSpace(body[:min(len(body), 200)]))
	}
	if status >= 400 && status < 500 && status != 404 {
		out := &errs.Error{Kind: errs.Invalid, Msg: msg}
		if e.Error.Param != nil {
			out.Param = *e.Error.Param
		}
		return out
	}
	return errs.E(errs.Internal, "engine failed with status %d: %s", status, msg)
}

// Models lists the services caller may call, as OpenAI model objects.
func (g *Gateway) Models(caller auth.Key) []Model {
	out := []Model{}
	for _, s := range g.table.Services() {
		if caller.Admin || s.OwnerID == caller.OwnerID {
			out = append(out, Model{ID: s.AccessName, Object: "model", Created: s.CreatedAt.Unix(), OwnedBy: "u-" + s.OwnerID})
		}
	}
	slices.SortFunc(out, func(a, b Model) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Model is the OpenAI model object.
type Model struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}
