package scale

import (
	"fmt"
	"strings"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/state"
)

// need is what one instance of a model takes from a worker besides a
// slot: memory for a model that runs on CPUs, GPU memory over its GPUs
// for one that runs on GPUs. Zero is not known, and not checked.
type need struct {
	memory    int64
	gpus      int
	gpuMemory int64
}

// needOf is what an instance of the model needs; a service from before
// services carried their model needs nothing that can be checked.
func needOf(m *events.ModelSpec) need {
	if m == nil {
		return need{}
	}
	return need{memory: m.MemoryBytes, gpus: m.GPUs, gpuMemory: m.GPUMemoryBytes}
}

// usedMemory is the memory a placement holds on its worker: what its
// model needs when it runs on CPUs.
func usedMemory(p state.Placement) int64 {
	if n := needOf(p.Model); n.gpus == 0 {
		return n.memory
	}
	return 0
}

// fits says what is missing for an instance needing n on worker w, whose
// placed instances hold used bytes of its memory; "" when it fits. A
// worker that does not advertise its memory takes anything, as do GPUs
// it does not have: the worker then runs the instance on the simulator.
func fits(w state.Worker, n need, used int64) string {
	if n.gpus == 0 {
		if n.memory > 0 && w.MemoryBytes > 0 && n.memory > w.MemoryBytes-used {
			return fmt.Sprintf("%s free of %s", gib(max(w.MemoryBytes-used, 0)), gib(w.MemoryBytes))
		}
		return ""
	}
	if n.gpuMemory > 0 && w.GPUs >= n.gpus && w.GPUMemoryBytes > 0 {
		if perGPU := (n.gpuMemory + int64(n.gpus) - 1) / int64(n.gpus); perGPU > w.GPUMemoryBytes {
			return fmt.Sprintf("%s per GPU", gib(w.GPUMemoryBytes))
		}
	}
	return ""
}

// fitting returns the workers an instance needing n fits on and, when it
// fits on none, a reason for the service's status that says what was
// missing and where.
func fitting(workers []state.Worker, n need, used map[string]int64) ([]state.Worker, string) {
	var ok []state.Worker
	var short []string
	for _, w := range workers {
		if why := fits(w, n, used[w.ID]); why != "" {
			short = append(short, w.ID+": "+why)
			continue
		}
		ok = append(ok, w)
	}
	if len(ok) > 0 || len(short) == 0 {
		return ok, ""
	}
	what := "an instance needs " + gib(n.memory) + " of memory"
	if n.gpus > 0 {
		what = fmt.Sprintf("an instance needs %s of GPU memory over %d GPU(s)", gib(n.gpuMemory), n.gpus)
	}
	const most = 3
	where := short
	if len(where) > most {
		where = append(where[:most:most], fmt.Sprintf("%d more", len(short)-most))
	}
	return nil, fmt.Sprintf("no worker has the memory: %s (%s)", what, strings.Join(where, "; "))
}

// gib formats bytes in GiB with one decimal, for people.
func gib(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }
