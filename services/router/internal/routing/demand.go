package routing

import (
	"sync"
	"time"
)

// Demand counts, per service, the requests this router is serving or
// holding for an instance: the signal the autoscaler sizes services by.
// It is safe for concurrent use.
type Demand struct {
	mu       sync.Mutex
	services map[string]*serviceDemand
	waiting  chan struct{} // signalled when a request starts waiting
	now      func() time.Time
}

type serviceDemand struct {
	inFlight, waiting int
	requests          uint64
	last              time.Time
	changed           bool // since the last Snapshot
}

// DemandSample is one service's demand at a Snapshot.
type DemandSample struct {
	ServiceID     string
	InFlight      int
	Waiting       int
	Requests      uint64
	LastRequestAt time.Time
}

// NewDemand returns an empty Demand.
func NewDemand() *Demand {
	return &Demand{services: map[string]*serviceDemand{}, waiting: make(chan struct{}, 1), now: time.Now}
}

func (d *Demand) get(serviceID string) *serviceDemand {
	s, ok := d.services[serviceID]
	if !ok {
		s = &serviceDemand{}
		d.services[serviceID] = s
	}
	return s
}

// Begin counts a request to a service until done is called.
func (d *Demand) Begin(serviceID string) (done func()) {
	d.mu.Lock()
	s := d.get(serviceID)
	s.inFlight++
	s.requests++
	s.last = d.now().UTC()
	s.changed = true
	d.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			d.mu.Lock()
			s.inFlight--
			s.last = d.now().UTC()
			s.changed = true
			d.mu.Unlock()
		})
	}
}

// Wait marks a begun request as held for a ready instance until done is
// called, and signals Waiting so the demand is reported at once.
func (d *Demand) Wait(serviceID string) (done func()) {
	d.mu.Lock()
	s := d.get(serviceID)
	s.waiting++
	s.changed = true
	d.mu.Unlock()
	select {
	case d.waiting <- struct{}{}:
	default:
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			d.mu.Lock()
			s.waiting--
			s.changed = true
			d.mu.Unlock()
		})
	}
}

// Waiting is signalled when a request starts waiting for an instance.
func (d *Demand) Waiting() <-chan struct{} { return d.waiting }

// Snapshot returns the services whose demand changed since the last
// Snapshot or that still have requests in flight, and forgets services
// that are quiet.
func (d *Demand) Snapshot() []DemandSample {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []DemandSample
	for id, s := range d.services {
		if !s.changed && s.inFlight == 0 {
			delete(d.services, id)
			continue
		}
		out = append(out, DemandSample{ServiceID: id, InFlight: s.inFlight, Waiting: s.waiting, Requests: s.requests, LastRequestAt: s.last})
		s.changed = false
	}
	return out
}

// Current returns every service's demand now, leaving what Snapshot
// reports untouched.
func (d *Demand) Current() []DemandSample {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]DemandSample, 0, len(d.services))
	for id, s := range d.services {
		out = append(out, DemandSample{ServiceID: id, InFlight: s.inFlight, Waiting: s.waiting, Requests: s.requests, LastRequestAt: s.last})
	}
	return out
}

// Touch has the next Snapshot report a service again, as after a report
// that could not be written.
func (d *Demand) Touch(serviceID string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.get(serviceID).changed = true
}
