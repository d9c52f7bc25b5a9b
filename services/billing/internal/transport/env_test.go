package transport_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
	"github.com/modelport/modelport/services/billing/internal/clickhouse"
	"github.com/modelport/modelport/services/billing/internal/transport"
)

func TestMain(m *testing.M) { os.Exit(chtest.Main(m)) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// env is billing's transport over a real JetStream server and a real
// ClickHouse database, with users alice and bob and an admin.
type env struct {
	t      *testing.T
	ctx    context.Context
	bus    *natsx.Bus // the test's own, as the test admin
	svcBus *natsx.Bus // billing's, as its identity
	store  *clickhouse.Store
	dead   *transport.DeadLetters
	url    string // the usage API, once serve has run
	chAddr string
	alice  auth.Key
	bob    auth.Key
	// secrets
	aliceKey, bobKey, adminKey string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// Billing's parts run as its NATS identity (e.billing); the test plays
	// the other services as the test admin (e.bus).
	ns := natstest.New(t)
	bus := ns.Bus(t, natstest.Admin)
	billingBus := ns.Bus(t, access.Billing)
	addr, db := chtest.New(t)
	store, err := clickhouse.Open(addr, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, bus: bus, svcBus: billingBus, store: store, dead: transport.NewDeadLetters(billingBus.JS), chAddr: addr}
	keys := auth.NewKeyring(bus.KV(state.BucketAPIKeys))
	for _, u := range []struct {
		secret *string
		key    *auth.Key
		admin  bool
	}{{&e.aliceKey, &e.alice, false}, {&e.bobKey, &e.bob, false}, {&e.adminKey, new(auth.Key), true}} {
		*u.secret = auth.NewSecret()
		*u.key = auth.NewKey(*u.secret, auth.NewOwnerID(), u.admin)
		if err := keys.Put(ctx, *u.key); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// service stores a service record owned by owner, as the deployer would.
func (e *env) service(owner auth.Key, method string, created time.Time) state.Service {
	e.t.Helper()
	s := state.Service{ID: events.NewMeta().ID, OwnerID: owner.OwnerID, Name: "chat", AccessName: "u-" + owner.OwnerID + "/chat",
		BaseModel: "qwen2.5-7b-instruct", Task: state.TaskTextGeneration, Instances: 1, Status: state.StatusRunning,
		BillingMethod: method, CreatedAt: created, UpdatedAt: created}
	if err := state.Put(e.ctx, e.bus.KV(state.BucketServices), s.ID, s); err != nil {
		e.t.Fatal(err)
	}
	return s
}

// billing returns the domain service over the env's store, with the
// built-in price list stored.
func (e *env) billing(store billing.Store, opts ...billing.Option) *billing.Service {
	e.t.Helper()
	svc := billing.New(store, transport.Services{KV: e.svcBus.KV(state.BucketServices)}, opts...)
	if _, err := svc.AddPrices(e.ctx, billing.DefaultPriceList()); err != nil {
		e.t.Fatal(err)
	}
	return svc
}

// consume starts the consumers with svc and stops them at cleanup.
func (e *env) consume(svc *billing.Service) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	done, err := transport.Consume(ctx, e.svcBus.JS, svc, e.dead, transport.BatchConfig{Size: 50, MaxWait: 50 * time.Millisecond, Inserters: 2}, quiet)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		cancel()
		<-done
	})
}

// serve starts the usage API with svc.
func (e *env) serve(svc *billing.Service) {
	srv := httptest.NewServer(transport.NewHandler(svc, e.dead, auth.NewKeyring(e.svcBus.KV(state.BucketAPIKeys)), quiet))
	e.t.Cleanup(srv.Close)
	e.url = srv.URL
}

// eventually polls cond until it returns nil or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s: %v", within, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
