package scale

import (
	"fmt"
	"slices"

	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/state"
)

// Need is what one instance takes from the worker that runs it, besides a
// slot: GPUs and the memory over them for a model that runs on GPUs, or
// memory for one that runs on CPUs. Zero is none, or not known, and not
// checked. A resource added here is reckoned in needOn, counted in Room
// and checked in fits.
type Need struct {
	GPUs int
	// Memory is the worker memory an instance on CPUs takes.
	Memory int64
	// GPUMemory is the memory an instance on GPUs needs over all of them.
	GPUMemory int64
	// SimMemory is, for a model on CPUs that the worker runs on the
	// simulator (it may not run the model's engine), the memory the model
	// takes on its engine. The simulator takes none of it, so none is
	// reserved (the worker's heartbeat holds none either), but the worker
	// must have that much in all: placement on the simulator stands in
	// for placement on the engine, and a model that fits no worker stays
	// pending and says so.
	SimMemory int64
}

// Room is what a live worker has left, as the scaler reckons it: its last
// heartbeat's free slots, GPUs and memory, less what the placements made
// since take that the heartbeat does not list yet.
type Room struct {
	Worker state.Worker
	Slots  int
	GPUs   int
	// Memory is left of the worker's advertised memory; meaningless when
	// the worker advertises none (Worker.MemoryBytes 0).
	Memory int64
}

// newRoom reckons a worker's room from its heartbeat.
func newRoom(w state.Worker) *Room {
	r := &Room{Worker: w, Slots: w.Capacity - len(w.Instances), GPUs: w.FreeGPUs, Memory: w.MemoryBytes}
	for _, h := range w.Held {
		r.Memory -= h.MemoryBytes
	}
	return r
}

// take counts an instance needing n against the room.
func (r *Room) take(n Need) {
	r.Slots--
	r.GPUs -= n.GPUs
	r.Memory -= n.Memory
}

// needOn returns what an instance of svc needs on worker w. A worker runs
// a model on its engine only if it may run that engine and has the GPUs
// the model needs; else it runs it on the simulator (inference-worker's
// app decides the same way), which needs no GPUs and reserves no memory,
// though a model on CPUs must fit the worker's memory (SimMemory). What the model needs
// comes from the service's model spec, or, for a service from before
// services carried one, from the catalog, which knows its GPUs. A model
// neither knows needs nothing: the worker refuses it, if it must.
func needOn(cat *catalog.Catalog, svc state.Service, w state.Worker) Need {
	var n Need
	var eng string
	switch m := svc.Model; {
	case m != nil:
		eng, n = m.Engine, Need{GPUs: m.GPUs, Memory: m.MemoryBytes, GPUMemory: m.GPUMemoryBytes}
	default:
		c, ok := cat.Lookup(svc.BaseModel)
		if !ok {
			return Need{}
		}
		eng, n = c.Engine, Need{GPUs: c.GPUs}
	}
	if !slices.Contains(w.Engines, eng) || n.GPUs > w.GPUs {
		if n.GPUs == 0 {
			return Need{SimMemory: n.Memory} // the simulator
		}
		return Need{} // the simulator, for a model it has not the GPUs for
	}
	if n.GPUs > 0 {
		n.Memory = 0
	} else {
		n.GPUMemory = 0
	}
	return n
}

// shortage says what a worker with room r lacks for one more instance
// that needs n there.
type shortage int

const (
	enough shortage = iota
	noSlot
	fewGPUs
	littleMemory
	smallGPUs
)

// fits reports whether a worker with room r can take one more instance
// that needs n there, and if not, what it lacks and why, in words the
// service's status reason can carry. A worker that does not advertise its
// memory takes any memory.
func fits(r Room, n Need) (shortage, string) {
	w := r.Worker
	switch {
	case r.Slots < 1:
		return noSlot, fmt.Sprintf("worker %s is full", w.ID)
	case n.GPUs > r.GPUs:
		return fewGPUs, fmt.Sprintf("worker %s has %d of the %d GPUs an instance needs free", w.ID, max(r.GPUs, 0), n.GPUs)
	case n.Memory > 0 && w.MemoryBytes > 0 && n.Memory > r.Memory,
		n.SimMemory > 0 && w.MemoryBytes > 0 && n.SimMemory > w.MemoryBytes:
		return littleMemory, fmt.Sprintf("%s: %s free of %s", w.ID, gib(max(r.Memory, 0)), gib(w.MemoryBytes))
	case n.GPUs > 0 && n.GPUMemory > 0 && w.GPUMemoryBytes > 0 && perGPU(n) > w.GPUMemoryBytes:
		return smallGPUs, fmt.Sprintf("%s: %s per GPU", w.ID, gib(w.GPUMemoryBytes))
	}
	return enough, ""
}

// perGPU is the memory an instance needs on each of its GPUs.
func perGPU(n Need) int64 { return (n.GPUMemory + int64(n.GPUs) - 1) / int64(n.GPUs) }

// gib formats bytes in GiB with one decimal, for people.
func gib(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }
