package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// The deployer announces its changes through the service record's outbox:
// a change and the event announcing it are stored in one write, then the
// event is published, then removed from the outbox. An event whose publish
// fails stays in the outbox and is published again, with the same event
// ID (so JetStream stores it once), by a retried API call and by the
// leader's sweep, in the order the changes were stored.

// stage adds ev to the service's outbox.
func stage(s *state.Service, ev events.Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode %s: %w", ev.Subject(), err)
	}
	s.Outbox = append(s.Outbox, state.Announcement{Subject: ev.Subject(), EventID: ev.EventID(), Data: b})
	return nil
}

// announcement decodes an outbox entry into its event.
func announcement(a state.Announcement) (events.Event, error) {
	switch a.Subject {
	case events.SubjectServiceCreatedV1:
		return decode[events.ServiceCreatedV1](a)
	case events.SubjectServiceScaledV1:
		return decode[events.ServiceScaledV1](a)
	case events.SubjectServiceDeletedV1:
		return decode[events.ServiceDeletedV1](a)
	}
	return nil, errs.E(errs.Internal, "outbox holds an event on %s, which the deployer does not publish", a.Subject)
}

func decode[T events.Event](a state.Announcement) (events.Event, error) {
	var ev T
	if err := json.Unmarshal(a.Data, &ev); err != nil {
		return nil, fmt.Errorf("decode outbox event %s: %w", a.EventID, err)
	}
	return ev, nil
}

// announce publishes a service's outbox, in order, and removes what was
// published. It stops at the first event that cannot be published; that
// one and those after it stay for the next try. A missing service is no
// error.
func (m *Manager) announce(ctx context.Context, serviceID string) error {
	s, _, err := m.store.Get(ctx, serviceID)
	if errs.KindOf(err) == errs.NotFound {
		return nil
	}
	if err != nil {
		return err
	}
	if len(s.Outbox) == 0 {
		return nil
	}
	published := map[string]bool{}
	var pubErr error
	for _, a := range s.Outbox {
		ev, err := announcement(a)
		if err == nil {
			err = m.pub.Publish(ctx, ev)
		}
		if err != nil {
			pubErr = fmt.Errorf("announce %s of service %s: %w", a.Subject, serviceID, err)
			break
		}
		published[a.EventID] = true
	}
	if len(published) > 0 {
		if err := m.update(ctx, serviceID, false, func(s *state.Service) bool {
			n := len(s.Outbox)
			s.Outbox = slices.DeleteFunc(s.Outbox, func(a state.Announcement) bool { return published[a.EventID] })
			if len(s.Outbox) == 0 {
				s.Outbox = nil
			}
			return len(s.Outbox) != n
		}); err != nil && pubErr == nil {
			// Published but still in the outbox: published again later,
			// under the same ID.
			pubErr = err
		}
	}
	return pubErr
}

// public is a service as the control API shows it: without the deployer's
// bookkeeping.
func public(s state.Service) state.Service {
	s.Outbox, s.Attempt = nil, 0
	return s
}

// Public is a service as the control API shows it: without the deployer's
// bookkeeping (its outbox, its retry count). Views that read the services
// bucket directly show services through it.
func Public(s state.Service) state.Service { return public(s) }
