// Package events is the Go side of Modelport's event contract. Every type
// here has a JSON Schema in schemas/events named after its subject; a test
// keeps the two from drifting apart.
//
// Events are facts in the past tense. Each is published to JetStream with
// the header Nats-Msg-Id set to its EventID, which is also the dedupe key
// all the way into ClickHouse.
package events

import (
	"time"

	"github.com/google/uuid"
)

// Event is what every event type provides: the ID used for deduplication
// and the subject it is published on.
type Event interface {
	EventID() string
	Subject() string
}

// Meta is embedded first in every event.
type Meta struct {
	// ID is a UUIDv7: unique and time-ordered.
	ID string `json:"event_id"`
	// OccurredAt is when the fact happened, in UTC.
	OccurredAt time.Time `json:"occurred_at"`
}

// NewMeta returns a Meta with a fresh UUIDv7 and the current time.
func NewMeta() Meta {
	return Meta{ID: uuid.Must(uuid.NewV7()).String(), OccurredAt: time.Now().UTC()}
}

// EventID returns the event's ID.
func (m Meta) EventID() string { return m.ID }

// Subjects. Each stream below captures one domain's subjects.
const (
	SubjectServiceCreatedV1    = "deploy.service.created.v1"
	SubjectInstancePlacedV1    = "scale.instance.placed.v1" // + "." + worker ID
	SubjectInstanceReadyV1     = "worker.instance.ready.v1"
	SubjectInstanceStoppedV1   = "worker.instance.stopped.v1"
	SubjectInstanceFailedV1    = "worker.instance.failed.v1"
	SubjectRequestCompletedV1  = "usage.request.completed.v1"
	SubjectServiceScaledV1     = "deploy.service.scaled.v1"
	SubjectServiceDeletedV1    = "deploy.service.deleted.v1"
	SubjectInstanceReleasedV1  = "scale.instance.released.v1" // + "." + worker ID
	SubjectServiceAutoscaledV1 = "scale.service.autoscaled.v1"
	SubjectPlacementFailedV1   = "scale.placement.failed.v1"
)

// ServiceCreatedV1 says a user created a model service.
// Published by the deployer; consumed by the scaler (placement), billing
// (the billing method, for instance-hours) and anyone following the
// service lifecycle.
type ServiceCreatedV1 struct {
	Meta
	ServiceID     string `json:"service_id"`
	OwnerID       string `json:"owner_id"`
	Name          string `json:"name"`
	AccessName    string `json:"access_name"`
	BaseModel     string `json:"base_model"`
	Task          string `json:"task"`
	Engine        string `json:"engine"`
	Instances     int    `json:"instances"`
	BillingMethod string `json:"billing_method"`
}

// Subject implements Event.
func (ServiceCreatedV1) Subject() string { return SubjectServiceCreatedV1 }

// InstancePlacedV1 says the scaler placed one instance of a service on a
// worker. Published by the scaler on SubjectInstancePlacedV1 + "." +
// WorkerID; consumed by that inference-worker, which starts the instance,
// and by the deployer (a pending service becomes deploying).
type InstancePlacedV1 struct {
	Meta
	InstanceID string `json:"instance_id"`
	ServiceID  string `json:"service_id"`
	WorkerID   string `json:"worker_id"`
	AccessName string `json:"access_name"`
	BaseModel  string `json:"base_model"`
	Task       string `json:"task"`
	Engine     string `json:"engine"`
	// Model, when set, says what the instance serves, so that the worker
	// needs no catalog entry for it: a model its owner registered. Without
	// it (placements made before it existed, catalog models) the worker
	// looks BaseModel up in its own catalog.
	Model *ModelSpec `json:"model,omitempty"`
}

// ModelSpec is what a worker needs to run a model and what the scaler
// needs to place it: where the weights are, the engine, and the resources
// one instance takes. The deployer resolves it when a service is created
// and it travels with the service's record and its placements.
type ModelSpec struct {
	// Name is the model's name, as base_model gives it.
	Name string `json:"name"`
	// Owner is the owner ID of a model an owner registered, "public" for
	// one an admin registered for everyone, and "catalog" for the
	// operator's catalog.
	Owner string `json:"owner"`
	// Source is the weights' URI: file:///abs/path, hf://org/repo,
	// ollama://name:tag or s3://bucket/key. A catalog model's source is a
	// repository ID or path, as its catalog file gives it.
	Source string `json:"source"`
	// Engine runs the model: vllm, llama.cpp, sglang, ollama or simulator.
	Engine string `json:"engine"`
	// Format is the weights' format where known: gguf, safetensors or ollama.
	Format string `json:"format,omitempty"`
	// ContextLength is the longest sequence an instance takes, in tokens;
	// 0: the engine's default.
	ContextLength int `json:"context_length,omitempty"`
	// GPUs is how many GPUs one instance needs; 0 runs on CPUs.
	GPUs int `json:"gpus"`
	// MemoryBytes is the memory one instance needs on its worker, for a
	// model that runs on CPUs, and GPUMemoryBytes what it needs over all
	// its GPUs otherwise; 0: not known, not checked.
	MemoryBytes    int64 `json:"memory_bytes,omitempty"`
	GPUMemoryBytes int64 `json:"gpu_memory_bytes,omitempty"`
	// Adapter is a fine-tuned model's LoRA adapter, a source URI like
	// Source; Source is then its base model's weights.
	Adapter string `json:"adapter,omitempty"`
}

// Subject implements Event.
func (e InstancePlacedV1) Subject() string { return PlacementSubject(e.WorkerID) }

// PlacementSubject is the subject on which placements for one worker arrive.
func PlacementSubject(workerID string) string { return SubjectInstancePlacedV1 + "." + workerID }

// InstanceReadyV1 says an engine instance answered its readiness check and
// takes traffic. Published by the inference-worker; consumed by the
// deployer (ready counts, status) and billing (the start of the instance's
// billed time).
type InstanceReadyV1 struct {
	Meta
	InstanceID string `json:"instance_id"`
	ServiceID  string `json:"service_id"`
	WorkerID   string `json:"worker_id"`
	Engine     string `json:"engine"`
	Endpoint   string `json:"endpoint"`
}

// Subject implements Event.
func (InstanceReadyV1) Subject() string { return SubjectInstanceReadyV1 }

// InstanceStoppedV1 says an engine instance stopped taking traffic.
// Published by the inference-worker; consumed by the deployer (ready
// counts) and billing (the end of the instance's billed time).
type InstanceStoppedV1 struct {
	Meta
	InstanceID string `json:"instance_id"`
	ServiceID  string `json:"service_id"`
	WorkerID   string `json:"worker_id"`
	Reason     string `json:"reason"`
}

// Subject implements Event.
func (InstanceStoppedV1) Subject() string { return SubjectInstanceStoppedV1 }

// InstanceFailedV1 says the inference-worker gave up on an engine
// instance: it crashed too often in a short time, never answered its
// readiness check, or could not be started at all. The worker has removed
// the instance's record and freed its slot. Published by the
// inference-worker; consumed by the deployer (a service left with no
// ready instance fails, with the reason), the scaler (which unplaces the
// instance and places a replacement), billing (the end of the instance's
// billed time, even if the stop that should follow is lost) and people
// reading the reason and the log tail.
type InstanceFailedV1 struct {
	Meta
	InstanceID string `json:"instance_id"`
	ServiceID  string `json:"service_id"`
	WorkerID   string `json:"worker_id"`
	Engine     string `json:"engine"`
	Reason     string `json:"reason"`
	// ExitCode is the engine's last exit status; -1 when it was killed by
	// a signal, stopped by the worker, or never started.
	ExitCode int `json:"exit_code"`
	// Restarts counts the restarts after crashes before the worker gave up.
	Restarts int `json:"restarts"`
	// LogTail is the end of the engine's output, at most MaxLogTail bytes.
	LogTail string `json:"log_tail"`
}

// MaxLogTail bounds InstanceFailedV1.LogTail, in bytes of valid UTF-8.
const MaxLogTail = 8 << 10

// Subject implements Event.
func (InstanceFailedV1) Subject() string { return SubjectInstanceFailedV1 }

// RequestCompletedV1 is the metered usage of one API request. Published by
// the router once the engine has answered; consumed by billing, which
// stores it in ClickHouse keyed by EventID.
type RequestCompletedV1 struct {
	Meta
	RequestID        string    `json:"request_id"`
	ServiceID        string    `json:"service_id"`
	OwnerID          string    `json:"owner_id"`
	AccessName       string    `json:"access_name"`
	BaseModel        string    `json:"base_model"`
	APIKeyID         string    `json:"api_key_id"`
	InstanceID       string    `json:"instance_id"`
	Endpoint         string    `json:"endpoint"` // the API path, e.g. "/v1/chat/completions"
	Status           int       `json:"status"`   // the HTTP status returned to the client
	PromptTokens     int       `json:"prompt_tokens"`
	CompletionTokens int       `json:"completion_tokens"`
	TotalTokens      int       `json:"total_tokens"`
	StartedAt        time.Time `json:"started_at"`
	FinishedAt       time.Time `json:"finished_at"`
	// CachedTokens is how many of PromptTokens the engine found in its
	// prefix cache (usage.prompt_tokens_details.cached_tokens); 0 when
	// it found none or does not say.
	CachedTokens int `json:"cached_tokens,omitempty"`
}

// Subject implements Event.
func (RequestCompletedV1) Subject() string { return SubjectRequestCompletedV1 }

// ServiceScaledV1 says a service's desired instance count changed.
// Published by the deployer (a user's scale request, or an autoscaling
// decision, with its reason); consumed by the scaler, which places or
// releases instances until the service has To of them.
type ServiceScaledV1 struct {
	Meta
	ServiceID string `json:"service_id"`
	OwnerID   string `json:"owner_id"`
	From      int    `json:"from_instances"`
	To        int    `json:"to_instances"`
	Reason    string `json:"reason"`
}

// Subject implements Event.
func (ServiceScaledV1) Subject() string { return SubjectServiceScaledV1 }

// ServiceDeletedV1 says a user deleted a service. From OccurredAt on the
// router answers 404 for its access name and nothing more is billed for it.
// Published by the deployer; consumed by the scaler (release every
// instance) and billing (stop accruing).
type ServiceDeletedV1 struct {
	Meta
	ServiceID  string `json:"service_id"`
	OwnerID    string `json:"owner_id"`
	Name       string `json:"name"`
	AccessName string `json:"access_name"`
}

// Subject implements Event.
func (ServiceDeletedV1) Subject() string { return SubjectServiceDeletedV1 }

// InstanceReleasedV1 says the scaler took an instance off a worker (scale
// down, deletion, or a worker replaced). Published by the scaler on
// SubjectInstanceReleasedV1 + "." + WorkerID; consumed by that worker,
// which drains and stops the instance, by billing, which ends the
// instance's billed time at OccurredAt when WorkerGone is set (a worker
// that died publishes no InstanceStoppedV1), and, when WorkerGone is set,
// by the deployer, which recounts the service's ready instances without it.
type InstanceReleasedV1 struct {
	Meta
	InstanceID string `json:"instance_id"`
	ServiceID  string `json:"service_id"`
	WorkerID   string `json:"worker_id"`
	Reason     string `json:"reason"`
	// WorkerGone is true when the worker stopped beating and the instance
	// is gone with it; its time ends at OccurredAt. The scaler may
	// announce the same loss more than once.
	WorkerGone bool `json:"worker_gone,omitempty"`
}

// Subject implements Event.
func (e InstanceReleasedV1) Subject() string { return ReleaseSubject(e.WorkerID) }

// ReleaseSubject is the subject on which releases for one worker arrive.
func ReleaseSubject(workerID string) string { return SubjectInstanceReleasedV1 + "." + workerID }

// ServiceAutoscaledV1 is an autoscaling decision: the scaler wants a
// service's desired instance count moved from From to To, for Reason.
// Published by the scaler; consumed by the deployer, which stores the new
// count if the service still has From instances and its policy allows To,
// and then announces it as ServiceScaledV1.
type ServiceAutoscaledV1 struct {
	Meta
	ServiceID string `json:"service_id"`
	OwnerID   string `json:"owner_id"`
	From      int    `json:"from_instances"`
	To        int    `json:"to_instances"`
	Reason    string `json:"reason"`
	// InFlight is the requests in flight the routers reported, waiting
	// ones included.
	InFlight int `json:"in_flight"`
	// TargetInFlight is the policy's requests in flight per instance.
	TargetInFlight int `json:"target_in_flight"`
}

// Subject implements Event.
func (ServiceAutoscaledV1) Subject() string { return SubjectServiceAutoscaledV1 }

// PlacementFailedV1 says the scaler could not place all of a service's
// instances: no live worker has room. It is published when the situation
// starts or its reason changes, not at every retry; the scaler keeps
// trying. Published by the scaler; consumed by the deployer, which shows
// the reason on the service.
type PlacementFailedV1 struct {
	Meta
	ServiceID string `json:"service_id"`
	OwnerID   string `json:"owner_id"`
	Wanted    int    `json:"wanted_instances"`
	Placed    int    `json:"placed_instances"`
	Reason    string `json:"reason"`
}

// Subject implements Event.
func (PlacementFailedV1) Subject() string { return SubjectPlacementFailedV1 }

// Registry maps each schema name (the subject without a worker suffix) to a
// zero value of its Go type. The contract test walks it.
var Registry = map[string]Event{
	SubjectServiceCreatedV1:    ServiceCreatedV1{},
	SubjectInstancePlacedV1:    InstancePlacedV1{},
	SubjectInstanceReadyV1:     InstanceReadyV1{},
	SubjectInstanceStoppedV1:   InstanceStoppedV1{},
	SubjectInstanceFailedV1:    InstanceFailedV1{},
	SubjectRequestCompletedV1:  RequestCompletedV1{},
	SubjectServiceScaledV1:     ServiceScaledV1{},
	SubjectServiceDeletedV1:    ServiceDeletedV1{},
	SubjectInstanceReleasedV1:  InstanceReleasedV1{},
	SubjectServiceAutoscaledV1: ServiceAutoscaledV1{},
	SubjectPlacementFailedV1:   PlacementFailedV1{},
}
