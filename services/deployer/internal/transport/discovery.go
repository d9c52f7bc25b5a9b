package transport

import (
	"net/http"

	"github.com/modelport/modelport/services/deployer/internal/deploy"
)

// EventStream says where a client reads the platform's events: the NATS
// server whose JetStream streams hold them (docs/events.md). It is an
// object rather than a bare address so that what a reader needs to sign
// in, such as the credentials of a read-only identity, can join it.
type EventStream struct {
	// NATSURL is the NATS server as clients reach it.
	NATSURL string `json:"nats_url"`
}

// WithEventStream tells clients where the event stream is, in the answer
// to GET /api/v1/me (WithOwners), so "modelport events tail" needs no
// address of its own. Only admin keys are told: the streams hold every
// owner's events and NATS has no reader identity of its own yet.
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
