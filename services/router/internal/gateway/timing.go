package gateway

import (
	"context"
	"time"
)

// Stage is a step of a request's way through the router, timed so that
// where the router's time goes can be read from its metrics.
type Stage uint8

// The stages, in the order a request passes them.
const (
	StageAuth    Stage = iota // from its arrival to its key checked and its limits applied
	StageRead                 // reading its body
	StageParse                // parsing and checking it, resolving the service, admitting it, fetching images
	StageRoute                // choosing an instance (waiting for a ready one included)
	StageEngine               // from writing it to the engine to the engine's answer headers (the engine's own time included)
	StageAnswer               // reading a whole answer from the engine
	StageRewrite              // turning the engine's answer into the client's
	StageMetrics              // recording the request in the metrics
	StagePublish              // storing its usage event in JetStream
	StageWrite                // writing a whole answer to the client
	StageFirst                // a stream: from the engine's headers to the first content written to the client
	numStages
)

var stageNames = [numStages]string{"auth", "read", "parse", "route", "engine", "answer", "rewrite", "metrics", "publish", "write", "first_content"}

func (s Stage) String() string { return stageNames[s] }

// Stages lists every stage, in order.
func Stages() []Stage { return allStages[:] }

var allStages = func() (a [numStages]Stage) {
	for i := range a {
		a[i] = Stage(i)
	}
	return a
}()

// Timing is the time one request spent in each stage: each Mark closes
// the stage that ran since the previous one, so the stages of a request
// add up to the router's time on it. A nil *Timing records nothing. It is
// used by one goroutine at a time.
type Timing struct {
	d    [numStages]time.Duration
	last time.Time
}

// NewTiming starts timing a request that arrived now.
func NewTiming() *Timing { return &Timing{last: time.Now()} }

type timingKey struct{}

// WithTiming returns ctx carrying t, for the gateway to record in.
func WithTiming(ctx context.Context, t *Timing) context.Context {
	return context.WithValue(ctx, timingKey{}, t)
}

// TimingOf returns the timing ctx carries, or nil.
func TimingOf(ctx context.Context) *Timing {
	t, _ := ctx.Value(timingKey{}).(*Timing)
	return t
}

// Mark ends stage s now: the time since the previous mark is s's.
func (t *Timing) Mark(s Stage) {
	if t == nil {
		return
	}
	now := time.Now()
	t.d[s] += now.Sub(t.last)
	t.last = now
}

// Add gives stage s the time from start to now, which also becomes the
// start of the next stage: for a stage that does not follow the previous
// mark (a stream's usage, published when the stream ends).
func (t *Timing) Add(s Stage, start time.Time) {
	if t == nil {
		return
	}
	now := time.Now()
	t.d[s] += now.Sub(start)
	t.last = now
}

// Of returns the time spent in stage s.
func (t *Timing) Of(s Stage) time.Duration { return t.d[s] }
