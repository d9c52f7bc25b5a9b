package billing_test

import (
	"context"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/billing/internal/billing"
)

func usage(prompt, completion, total int) events.RequestCompletedV1 {
	now := time.Now().UTC().Truncate(time.Second)
	return events.RequestCompletedV1{
		Meta:      events.NewMeta(),
		RequestID: "req-1", ServiceID: "s1", OwnerID: "a11ce0000001", AccessName: "u-a11ce0000001/chat",
		BaseModel: "qwen2.5-7b-instruct", APIKeyID: "k1", InstanceID: "i1", Endpoint: "/v1/chat/completions",
		Status: 200, PromptTokens: prompt, CompletionTokens: completion, TotalTokens: total,
		StartedAt: now.Add(-time.Second), FinishedAt: now,
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		ev      func() events.RequestCompletedV1
		wantErr bool
	}{
		{name: "valid", ev: func() events.RequestCompletedV1 { return usage(10, 5, 15) }},
		{name: "valid with no tokens", ev: func() events.RequestCompletedV1 { return usage(0, 0, 0) }},
		{name: "missing id", wantErr: true, ev: func() events.RequestCompletedV1 {
			e := usage(10, 5, 15)
			e.ID = ""
			return e
		}},
		{name: "missing service", wantErr: true, ev: func() events.RequestCompletedV1 {
			e := usage(10, 5, 15)
			e.ServiceID = ""
			return e
		}},
		{name: "negative prompt", wantErr: true, ev: func() events.RequestCompletedV1 { return usage(-10, 25, 15) }},
		{name: "negative completion", wantErr: true, ev: func() events.RequestCompletedV1 { return usage(20, -5, 15) }},
		{name: "negative total", wantErr: true, ev: func() events.RequestCompletedV1 { return usage(0, 0, -1) }},
		{name: "total too small", wantErr: true, ev: func() events.RequestCompletedV1 { return usage(10, 5, 14) }},
		{name: "total too large", wantErr: true, ev: func() events.RequestCompletedV1 { return usage(10, 5, 16) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := billing.Check(tc.ev())
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("Check = %v, want nil", err)
				}
				return
			}
			if got, want := errs.KindOf(err), errs.Invalid; got != want {
				t.Errorf("kind = %v, want %v (err %v)", got, want, err)
			}
		})
	}
}

// fakeStore returns fixed totals and records what it was asked.
type fakeStore struct {
	batches [][]events.RequestCompletedV1
	asked   []string
}

func (f *fakeStore) InsertUsage(_ context.Context, batch []events.RequestCompletedV1) error {
	f.batches = append(f.batches, batch)
	return nil
}

func (f *fakeStore) Totals(_ context.Context, serviceID string) (billing.Totals, error) {
	f.asked = append(f.asked, serviceID)
	return billing.Totals{ServiceID: serviceID, Requests: 2, PromptTokens: 20, CompletionTokens: 10, TotalTokens: 30}, nil
}

// fakeServices knows services by ID.
type fakeServices map[string]state.Service

func (f fakeServices) Service(_ context.Context, id string) (state.Service, error) {
	s, ok := f[id]
	if !ok {
		return state.Service{}, errs.E(errs.NotFound, "service %s not found", id)
	}
	return s, nil
}

func TestTotals(t *testing.T) {
	alice := auth.Key{ID: "k-alice", OwnerID: "a11ce0000001"}
	bob := auth.Key{ID: "k-bob", OwnerID: "b0b000000002"}
	admin := auth.Key{ID: "k-admin", OwnerID: "ad0000000003", Admin: true}
	services := fakeServices{"s1": {ID: "s1", OwnerID: alice.OwnerID}}

	tests := []struct {
		name      string
		caller    auth.Key
		serviceID string
		wantKind  errs.Kind // Internal means success
		wantParam string
		wantAsked bool
	}{
		{name: "owner", caller: alice, serviceID: "s1", wantAsked: true},
		{name: "admin", caller: admin, serviceID: "s1", wantAsked: true},
		{name: "another owner", caller: bob, serviceID: "s1", wantKind: errs.NotFound},
		{name: "unknown service", caller: alice, serviceID: "s2", wantKind: errs.NotFound},
		{name: "unknown service for admin", caller: admin, serviceID: "s2", wantKind: errs.NotFound},
		{name: "empty service id", caller: alice, serviceID: "", wantKind: errs.Invalid, wantParam: "service_id"},
		{name: "wildcard in service id", caller: admin, serviceID: "s1.>", wantKind: errs.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := &fakeStore{}
			svc := billing.New(store, services)
			got, err := svc.Totals(context.Background(), tc.caller, tc.serviceID)
			if tc.wantKind == errs.Internal {
				if err != nil {
					t.Fatalf("Totals: %v", err)
				}
				want := billing.Totals{ServiceID: tc.serviceID, Requests: 2, PromptTokens: 20, CompletionTokens: 10, TotalTokens: 30}
				if got != want {
					t.Errorf("Totals = %+v, want %+v", got, want)
				}
			} else {
				if got, want := errs.KindOf(err), tc.wantKind; got != want {
					t.Fatalf("kind = %v, want %v (err %v)", got, want, err)
				}
				e, _ := errs.As(err)
				if got, want := e.Param, tc.wantParam; got != want {
					t.Errorf("param = %q, want %q", got, want)
				}
				if got != (billing.Totals{}) {
					t.Errorf("Totals returned %+v with the error", got)
				}
			}
			if got, want := len(store.asked) > 0, tc.wantAsked; got != want {
				t.Errorf("store asked = %v, want %v", got, want)
			}
		})
	}
}

func TestRecord(t *testing.T) {
	store := &fakeStore{}
	svc := billing.New(store, fakeServices{})
	batch := []events.RequestCompletedV1{usage(1, 2, 3), usage(4, 5, 9)}
	if err := svc.Record(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	if got, want := len(store.batches), 1; got != want {
		t.Fatalf("store got %d batches, want %d", got, want)
	}
	if got, want := len(store.batches[0]), 2; got != want {
		t.Errorf("batch has %d events, want %d", got, want)
	}
}
