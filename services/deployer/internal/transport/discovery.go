package transport

import (
	"net/http"

	"github.com/modelport/modelport/services/deployer/internal/deploy"
)

// EventStream says where a client reads the platform's events: the NATS
// server whose JetStream streams hold them (docs/events.md), and, where
// the operator allows it, the credentials of the read-only identity that
// may read them.
type EventStream struct {
	// NATSURL is the NATS server as clients reach it.
	NATSURL string `json:"nats_url"`
	// Identity names the NATS identity NKeySeed signs in as
	// (events-reader); empty with no seed.
	Identity string `json:"identity,omitempty"`
	// NKeySeed is that identity's NKey seed: it may read the event
	// streams and nothing else.
	NKeySeed string `json:"nkey_seed,omitempty"`
}

// WithEventStream tells clients where the event stream is, in the answer
// to GET /api/v1/me (WithOwners), so "modelport events tail" needs no
// address or credentials of its own. Only admin keys are told: the streams
// hold every owner's events.
func WithEventStream(es EventStream) Option {
	return func(h *handler, _ *http.ServeMux) {
		if es.NATSURL != "" {
			h.events = &es
		}
	}
}

// meView is GET /api/v1/me's answer: who the key acts for and, where the
// key may read it, where the event stream is.
type meView struct {
	deploy.Me
	Events *EventStream `json:"events,omitempty"`
}
