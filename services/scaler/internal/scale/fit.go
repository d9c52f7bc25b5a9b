package scale

import (
	"fmt"
	"slices"

	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/state"
)

// Need is what one instance takes from the worker that runs it, besides a
// slot. A resource added here (memory) is reckoned in needOn, counted in
// Room and checked in fits.
type Need struct {
	GPUs int
}

// Room is what a live worker has left, as the scaler reckons it: its last
// heartbeat's free slots and GPUs, less what the placements made since
// take that the heartbeat does not list yet.
type Room struct {
	Worker state.Worker
	Slots  int
	GPUs   int
}

// take counts an instance needing n against the room.
func (r *Room) take(n Need) {
	r.Slots--
	r.GPUs -= n.GPUs
}

// needOn returns what an instance of a service on baseModel needs on worker
// w. A worker runs a model on its catalog engine, with the catalog's GPUs,
// only if it may run that engine and has that many GPUs; else it runs it
// on the simulator, which needs none (inference-worker's app does the
// same). A model the catalog does not know needs nothing: the worker
// refuses it, if it must.
func needOn(cat *catalog.Catalog, baseModel string, w state.Worker) Need {
	m, ok := cat.Lookup(baseModel)
	if !ok || m.GPUs == 0 || !slices.Contains(w.Engines, m.Engine) || m.GPUs > w.GPUs {
		return Need{}
	}
	return Need{GPUs: m.GPUs}
}

// fits reports whether a worker with room r can take one more instance
// that needs n there, and if not, why, in words the service's status
// reason can carry.
func fits(r Room, n Need) (bool, string) {
	switch {
	case r.Slots < 1:
		return false, fmt.Sprintf("worker %s is full", r.Worker.ID)
	case n.GPUs > r.GPUs:
		return false, fmt.Sprintf("worker %s has %d of the %d GPUs an instance needs free", r.Worker.ID, max(r.GPUs, 0), n.GPUs)
	}
	return true, ""
}
