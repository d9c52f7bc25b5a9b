// Package state holds the records Modelport services keep in JetStream
// key-value buckets and share with each other: one owner writes each
// bucket, the others read or watch it.
//
//	bucket      key                          owner            readers
//	services    <service id>                 deployer         router, scaler, billing
//	names       <owner id>.<name>            deployer         (uniqueness only)
//	placements  <service id>.<instance id>   scaler           scaler, inference-worker (on restart)
//	instances   <service id>.<instance id>   inference-worker router, deployer (the scaler removes a dead worker's)
//	workers     <worker id>                  inference-worker scaler (TTL: a worker that stops beating disappears)
//	apikeys     <sha256 of the secret>       deployer         router, deployer, billing
//	owners      <owner id>, name.<handle>    deployer         deployer (users and organisations)
//	idempotency <owner id>.<sha256 of key>   deployer         deployer (TTL: keys expire after IdempotencyTTL)
//	images      (object store) <name>.png    router           router (TTL: ImageTTL)
//	load        <service id>.<router id>     router           scaler (TTL: LoadTTL; the autoscaler's demand signal)
//	models      <owner id>.<name>            deployer         deployer (models owners registered; "public" for everyone's)
//	leases      <service>.<lease name>       its holder       the same service's other processes (TTL: LeaseTTL; one holder at a time)
package state

import (
	"context"
	"fmt"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/nats-io/nats.go/jetstream"
)

// Bucket names.
const (
	BucketServices   = "services"
	BucketNames      = "names"
	BucketPlacements = "placements"
	BucketInstances  = "instances"
	BucketWorkers    = "workers"
	BucketAPIKeys    = "apikeys"
	// BucketOwners holds users and organisations: by owner ID, and a
	// "name.<handle>" claim per handle for uniqueness.
	BucketOwners = "owners"
	// BucketIdempotency holds the Idempotency-Key values of create
	// requests, so a retried request returns the first one's result.
	BucketIdempotency = "idempotency"
	// BucketImages is an object store: generated images the router serves
	// by URL for ImageTTL.
	BucketImages = "images"
	// BucketLoad holds each router's requests in flight per service, the
	// demand the autoscaler sizes services by.
	BucketLoad = "load"
	// BucketModels holds the models owners registered, under
	// "<owner id>.<name>", and those an admin registered for everyone
	// under "public.<name>".
	BucketModels = "models"
	// BucketLeases holds leases: work that one process of a service at a
	// time may do (billing's migrations, price changes, period closings
	// and scheduled jobs). A holder keeps its key alive by writing it again
	// within LeaseTTL; a holder that dies loses it when the key expires.
	BucketLeases = "leases"
)

// LeaseTTL is how long a lease lasts without being renewed.
const LeaseTTL = 30 * time.Second

// LoadTTL is how long a router's load report lasts without a newer one.
const LoadTTL = time.Minute

// ImageTTL is how long a generated image can be downloaded.
const ImageTTL = time.Hour

// IdempotencyTTL is how long an Idempotency-Key is remembered.
const IdempotencyTTL = 24 * time.Hour

// WorkerTTL is how long a worker stays listed after its last heartbeat.
const WorkerTTL = 15 * time.Second

// Buckets are the key-value buckets' configurations.
var Buckets = []jetstream.KeyValueConfig{
	{Bucket: BucketServices, History: 5, Storage: jetstream.FileStorage},
	{Bucket: BucketNames, Storage: jetstream.FileStorage},
	{Bucket: BucketPlacements, Storage: jetstream.FileStorage},
	{Bucket: BucketInstances, Storage: jetstream.FileStorage},
	{Bucket: BucketWorkers, Storage: jetstream.FileStorage, TTL: WorkerTTL},
	{Bucket: BucketAPIKeys, Storage: jetstream.FileStorage},
	{Bucket: BucketOwners, Storage: jetstream.FileStorage},
	{Bucket: BucketIdempotency, Storage: jetstream.FileStorage, TTL: IdempotencyTTL},
	{Bucket: BucketLoad, Storage: jetstream.MemoryStorage, TTL: LoadTTL},
	{Bucket: BucketModels, Storage: jetstream.FileStorage},
	{Bucket: BucketLeases, Storage: jetstream.FileStorage, TTL: LeaseTTL},
}

// ObjectStores are the object stores' configurations.
var ObjectStores = []jetstream.ObjectStoreConfig{
	{Bucket: BucketImages, TTL: ImageTTL, Storage: jetstream.FileStorage},
}

// EnsureBuckets creates or updates every bucket and object store with the
// given number of replicas and returns the buckets by name.
func EnsureBuckets(ctx context.Context, js jetstream.JetStream, replicas int) (map[string]jetstream.KeyValue, error) {
	kvs := make(map[string]jetstream.KeyValue, len(Buckets))
	for _, cfg := range Buckets {
		cfg.Replicas = max(replicas, 1)
		kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("ensure bucket %s: %w", cfg.Bucket, err)
		}
		kvs[cfg.Bucket] = kv
	}
	for _, cfg := range ObjectStores {
		cfg.Replicas = max(replicas, 1)
		if _, err := js.CreateOrUpdateObjectStore(ctx, cfg); err != nil {
			return nil, fmt.Errorf("ensure object store %s: %w", cfg.Bucket, err)
		}
	}
	return kvs, nil
}

// Task types a service can serve.
const (
	TaskTextGeneration     = "text-generation"
	TaskImageUnderstanding = "image-understanding"
	TaskImageGeneration    = "image-generation"
)

// Billing methods.
const (
	BillingPerToken        = "per-token"
	BillingPerInstanceHour = "per-instance-hour"
)

// Service statuses.
const (
	// StatusPending is a service created and not yet placed on a worker.
	StatusPending   = "pending"
	StatusDeploying = "deploying"
	StatusRunning   = "running"
	StatusFailed    = "failed"
	StatusDeleting  = "deleting"
	StatusDeleted   = "deleted"
	// StatusScaling is a running service whose desired instance count
	// changed and whose ready count has not caught up yet.
	StatusScaling = "scaling"
	// StatusIdle is a service scaled to zero with no instance left: it
	// exists and keeps its name, but serves nothing until scaled up.
	StatusIdle = "idle"
)

// Service is a deployed model service.
type Service struct {
	ID             string    `json:"id"`
	OwnerID        string    `json:"owner_id"`
	Name           string    `json:"name"`
	AccessName     string    `json:"access_name"`
	BaseModel      string    `json:"base_model"`
	Task           string    `json:"task"`
	Engine         string    `json:"engine"`
	Instances      int       `json:"instances"`
	ReadyInstances int       `json:"ready_instances"`
	Status         string    `json:"status"`
	BillingMethod  string    `json:"billing_method"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`
	// StatusReason says why the status is what it is, where that is not
	// obvious: why a service failed, or why instances are not placed.
	StatusReason string `json:"status_reason,omitempty"`
	// Autoscale, when set, lets the scaler choose Instances within its
	// bounds from the requests in flight.
	Autoscale *Autoscale `json:"autoscale,omitempty"`
	// Model is the base model as it was resolved when the service was
	// created: where its weights are, its engine and what an instance
	// needs. Its placements carry it to the workers. Services created
	// before it existed have none; their workers use their catalog.
	Model *events.ModelSpec `json:"model,omitempty"`
	// RoutingPolicy is how the router chooses among the service's ready
	// instances: one of RoutingPolicies. Records stored before services
	// had one have none; see Routing.
	RoutingPolicy string `json:"routing_policy"`
}

// Routing returns the service's routing policy: RoutingLeastOutstanding,
// what every service was routed by before they had a policy, for a
// record that names none.
func (s Service) Routing() string {
	if s.RoutingPolicy == "" {
		return RoutingLeastOutstanding
	}
	return s.RoutingPolicy
}

// Routing policies: how the router picks a service's instance for a
// request.
const (
	// RoutingLeastOutstanding sends each request to the instance with
	// the fewest requests in flight.
	RoutingLeastOutstanding = "least-outstanding"
	// RoutingPrefixAffinity sends requests that begin alike (a chat's
	// system prompt and first turn, which every later turn repeats) to
	// the same instance, whose prefix cache then holds them, unless that
	// instance is loaded beyond a bound above the average; then to the
	// least loaded.
	RoutingPrefixAffinity = "prefix-affinity"
	// RoutingRoundRobin sends requests to the instances in turn.
	RoutingRoundRobin = "round-robin"
)

// RoutingPolicies lists the routing policies a service may have.
var RoutingPolicies = []string{RoutingLeastOutstanding, RoutingPrefixAffinity, RoutingRoundRobin}

// Autoscale is a service's autoscaling policy.
type Autoscale struct {
	MinInstances int `json:"min_instances"`
	MaxInstances int `json:"max_instances"`
	// TargetInFlight is the number of requests in flight per instance
	// the autoscaler aims for.
	TargetInFlight int `json:"target_in_flight"`
	// ScaleToZeroAfter is how many seconds without a request a service
	// with MinInstances 0 keeps one instance before it is scaled to zero.
	ScaleToZeroAfter int `json:"scale_to_zero_after_seconds,omitempty"`
}

// Load is one router's demand for one service: the requests it is
// serving or holding for an instance. Routers write it while the service
// has traffic and once more when it stops.
type Load struct {
	ServiceID string `json:"service_id"`
	RouterID  string `json:"router_id"`
	// InFlight counts requests being answered or waiting for an instance.
	InFlight int `json:"in_flight"`
	// Waiting counts the requests of InFlight held for a ready instance,
	// as when a service scaled to zero starts again.
	Waiting int `json:"waiting"`
	// Requests counts the requests this router has started for the
	// service since it started.
	Requests      uint64    `json:"requests"`
	LastRequestAt time.Time `json:"last_request_at"`
	ReportedAt    time.Time `json:"reported_at"`
}

// LoadKey is the key of a load report: "<service>.<router>".
func LoadKey(serviceID, routerID string) string { return serviceID + "." + routerID }

// Owner kinds.
const (
	OwnerUser         = "user"
	OwnerOrganization = "organization"
)

// Owner is a user or an organisation: what owns services and API keys.
// Its members act through the API keys it holds.
type Owner struct {
	ID        string    `json:"id"` // 12 lower-case hex digits, as in access names
	Kind      string    `json:"kind"`
	Name      string    `json:"name"` // a unique handle
	CreatedAt time.Time `json:"created_at"`
}

// Placement is the scaler's decision to run one instance on one worker. It
// carries what the worker needs to start the instance, so a restarted
// worker can start its placements again from this bucket alone.
type Placement struct {
	InstanceID string    `json:"instance_id"`
	ServiceID  string    `json:"service_id"`
	WorkerID   string    `json:"worker_id"`
	AccessName string    `json:"access_name"`
	BaseModel  string    `json:"base_model"`
	Task       string    `json:"task"`
	Engine     string    `json:"engine"`
	PlacedAt   time.Time `json:"placed_at"`
	// Model is the service's model spec, as the placement event carries it.
	Model *events.ModelSpec `json:"model,omitempty"`
}

// Instance statuses.
const (
	InstanceStarting = "starting"
	InstanceReady    = "ready"
	InstanceStopped  = "stopped"
)

// Instance is a running engine instance as its worker reports it.
type Instance struct {
	ID        string    `json:"id"`
	ServiceID string    `json:"service_id"`
	WorkerID  string    `json:"worker_id"`
	Engine    string    `json:"engine"`
	Endpoint  string    `json:"endpoint"` // the engine's own OpenAI base URL, ending in /v1
	Status    string    `json:"status"`
	StartedAt time.Time `json:"started_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Worker is an inference-worker's heartbeat: what it can hold and what it runs.
type Worker struct {
	ID        string    `json:"id"`
	Capacity  int       `json:"capacity"` // instances it can hold
	Running   int       `json:"running"`
	GPUs      int       `json:"gpus"`      // GPUs it hands out
	FreeGPUs  int       `json:"free_gpus"` // of those, not assigned to an instance
	Instances []string  `json:"instances"` // IDs of its instances
	BeatAt    time.Time `json:"beat_at"`
	// MemoryBytes is the memory the worker's instances may use in all;
	// 0: not advertised (a worker from before it was), not checked.
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	// GPUMemoryBytes is the memory of each of its GPUs (the smallest,
	// where they differ); 0: no GPUs, or not advertised.
	GPUMemoryBytes int64 `json:"gpu_memory_bytes,omitempty"`
}

// InstanceKey is the key of an instance or placement: "<service>.<instance>".
func InstanceKey(serviceID, instanceID string) string { return serviceID + "." + instanceID }
