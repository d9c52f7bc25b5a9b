package kvstore_test

// Reproductions of the control-plane review's name-claim finding, on a
// real JetStream server.

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/kvstore"
	"github.com/nats-io/nats.go/jetstream"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// openBus opens a bus as the deployer on a server of the test's own.
func openBus(t *testing.T) *natsx.Bus {
	t.Helper()
	return natstest.New(t).Bus(t, access.Deployer)
}

// flakyCreate is a bucket whose Create misbehaves once: before (the write
// fails, and the caller's context ends with it, as when a client hangs up)
// or after (the write lands but its answer is lost, as in a timeout).
type flakyCreate struct {
	jetstream.KeyValue
	cancel      context.CancelFunc
	failBefore  bool
	failAfter   bool
	createCalls int
}

var errLost = errors.New("nats: timeout")

func (f *flakyCreate) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	f.createCalls++
	switch {
	case f.failBefore:
		f.failBefore = false
		f.cancel()
		return 0, errLost
	case f.failAfter:
		f.failAfter = false
		rev, err := f.KeyValue.Create(ctx, key, value, opts...)
		if err != nil {
			return rev, err
		}
		return 0, errLost
	}
	return f.KeyValue.Create(ctx, key, value, opts...)
}

func newService(name string) state.Service {
	now := time.Now().UTC()
	return state.Service{ID: uuid.NewString(), OwnerID: "a11ce0000001", Name: name, AccessName: "u-a11ce0000001/" + name,
		Status: state.StatusPending, Instances: 1, CreatedAt: now, UpdatedAt: now}
}

// Finding 5, scenario A: storing the service fails and the client is gone;
// the claim's compensation runs on the same dead context, and the name
// stays claimed for ever.
func TestReviewNameNotLeakedWhenCreateFails(t *testing.T) {
	bus := openBus(t)
	ctx, cancel := context.WithCancel(context.Background())
	services := &flakyCreate{KeyValue: bus.KV(state.BucketServices), cancel: cancel, failBefore: true}
	st := kvstore.New(services, bus.KV(state.BucketNames), bus.KV(state.BucketInstances), bus.KV(state.BucketPlacements))
	if err := st.Create(ctx, newService("chat")); err == nil {
		t.Fatal("create succeeded though storing the service failed")
	}
	if err := st.Create(context.Background(), newService("chat")); err != nil {
		t.Fatalf("the name of a service never stored is still claimed: %v", err)
	}
}

// Finding 5, scenario B: storing the service lands but its answer is lost;
// the name is released while the service exists, so a second service gets
// the same access name.
func TestReviewNameKeptWhenCreateLanded(t *testing.T) {
	bus := openBus(t)
	services := &flakyCreate{KeyValue: bus.KV(state.BucketServices), failAfter: true}
	st := kvstore.New(services, bus.KV(state.BucketNames), bus.KV(state.BucketInstances), bus.KV(state.BucketPlacements))
	_ = st.Create(context.Background(), newService("chat"))
	err := st.Create(context.Background(), newService("chat"))
	if errs.KindOf(err) != errs.Conflict {
		t.Fatalf("second service with the name of one that exists: %v, want a conflict", err)
	}
}

// Finding 5: the same for owner handles.
func TestReviewOwnerHandleNotLeaked(t *testing.T) {
	bus := openBus(t)
	ctx, cancel := context.WithCancel(context.Background())
	// The handle claim is the first Create, the owner record the second.
	st := kvstore.NewOwners(&secondCreateFails{flakyCreate: &flakyCreate{KeyValue: bus.KV(state.BucketOwners), cancel: cancel}})
	if err := st.CreateOwner(ctx, state.Owner{ID: "0000000000a1", Kind: state.OwnerOrganization, Name: "acme", CreatedAt: time.Now().UTC()}); err == nil {
		t.Fatal("created though storing the owner failed")
	}
	if err := st.CreateOwner(context.Background(), state.Owner{ID: "0000000000a2", Kind: state.OwnerOrganization, Name: "acme", CreatedAt: time.Now().UTC()}); err != nil {
		t.Fatalf("the handle of an owner never stored is still claimed: %v", err)
	}
}

// secondCreateFails fails the second Create and ends the caller's context.
type secondCreateFails struct{ *flakyCreate }

func (s *secondCreateFails) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	s.createCalls++
	if s.createCalls == 2 {
		s.cancel()
		return 0, errLost
	}
	return s.KeyValue.Create(ctx, key, value, opts...)
}

// The sweep frees names claimed for services that do not exist (a create
// whose compensation could not run) or are deleted, and claims again the
// name of a service that lost its claim.
func TestTidyNames(t *testing.T) {
	bus := openBus(t)
	ctx := context.Background()
	st := kvstore.New(bus.KV(state.BucketServices), bus.KV(state.BucketNames), bus.KV(state.BucketInstances), bus.KV(state.BucketPlacements))
	names := bus.KV(state.BucketNames)
	if _, err := names.Create(ctx, "a11ce0000001.leaked", []byte(uuid.NewString())); err != nil {
		t.Fatal(err)
	}
	live := newService("live")
	if err := st.Create(ctx, live); err != nil {
		t.Fatal(err)
	}
	if err := names.Delete(ctx, "a11ce0000001.live"); err != nil {
		t.Fatal(err)
	}
	if err := st.TidyNames(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := names.Get(ctx, "a11ce0000001.leaked"); err == nil {
		t.Error("the name of a service that does not exist is still claimed")
	}
	if e, err := names.Get(ctx, "a11ce0000001.live"); err != nil || string(e.Value()) != live.ID {
		t.Errorf("the live service's name: %v, want claimed again for it", err)
	}
	if err := st.Create(ctx, newService("leaked")); err != nil {
		t.Errorf("the freed name cannot be used: %v", err)
	}
}
