// Package lease elects one leader among a role's replicas (the deployers,
// the scalers) with a lease in a JetStream key-value bucket: the replica
// that creates the role's key leads, renews it while it lives, and deletes
// it when it stops; a bucket TTL removes the key of a leader that died, so
// another replica takes over within the TTL.
package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
)

// Holder is what a lease's key holds: who leads and since when.
type Holder struct {
	ID    string    `json:"id"`
	Since time.Time `json:"since"`
}

// NewHolderID returns an ID for this process: its host name and a random
// suffix, so replicas on one host differ.
func NewHolderID() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%s", host, uuid.NewString()[:8])
}

// Elector campaigns for one role's lease. The bucket's TTL must be TTL:
// a key is removed TTL after its last renewal.
type Elector struct {
	kv     jetstream.KeyValue
	role   string
	holder string
	log    *slog.Logger
	// TTL is the bucket's TTL. A leader that has not renewed for TTL less
	// Margin stops leading on its own, before any other replica can take
	// the key over, so two replicas never lead at once.
	TTL, Margin time.Duration
	// Renew is how often a leader renews; Retry how often a follower
	// tries to take the lease.
	Renew, Retry time.Duration
}

// New returns an Elector for role, campaigning as holder, with the timings
// of a bucket whose TTL is ttl.
func New(kv jetstream.KeyValue, role, holder string, ttl time.Duration, log *slog.Logger) *Elector {
	return &Elector{
		kv: kv, role: role, holder: holder, log: log.With("role", role, "holder", holder),
		TTL: ttl, Margin: ttl / 3, Renew: ttl / 6, Retry: ttl / 6,
	}
}

// Run campaigns until ctx ends. Each time it wins the lease it calls lead
// with a context that ends when the lease is lost (or ctx ends), and waits
// for lead to return before it campaigns again, so a process never leads
// twice at once. When ctx ends while it leads, it gives the lease up, so
// another replica takes over at once.
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context)) {
	for ctx.Err() == nil {
		sent := time.Now()
		rev, ok := e.acquire(ctx)
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-time.After(e.Retry):
			}
			continue
		}
		e.log.InfoContext(ctx, "leading")
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer cancel()
			lead(lctx)
		}()
		rev = e.hold(lctx, rev, sent)
		cancel()
		<-done
		if ctx.Err() != nil {
			e.release(rev)
			return
		}
		e.log.WarnContext(ctx, "lease lost; following")
	}
}

func (e *Elector) value() []byte {
	b, _ := json.Marshal(Holder{ID: e.holder, Since: time.Now().UTC()})
	return b
}

// acquire creates the lease's key if no one holds it.
func (e *Elector) acquire(ctx context.Context) (uint64, bool) {
	actx, cancel := context.WithTimeout(ctx, e.Retry+time.Second)
	defer cancel()
	rev, err := e.kv.Create(actx, e.role, e.value())
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) && ctx.Err() == nil {
			e.log.DebugContext(ctx, "campaign", "err", err)
		}
		return 0, false
	}
	return rev, true
}

// hold renews the lease until it is lost or ctx ends, and returns its last
// revision. A renewal refused because the key changed means another
// replica leads; renewals that fail otherwise (NATS unreachable) are
// retried until the lease may have expired, less the margin. Expiry counts
// from when the last successful write was sent, which is no later than the
// server's time of it, from which the bucket's TTL counts.
func (e *Elector) hold(ctx context.Context, rev uint64, renewed time.Time) uint64 {
	t := time.NewTicker(e.Renew)
	defer t.Stop()
	for {
		expires := renewed.Add(e.TTL - e.Margin)
		select {
		case <-ctx.Done():
			return rev
		case <-time.After(time.Until(expires)):
			e.log.WarnContext(ctx, "lease not renewed in time")
			return rev
		case <-t.C:
		}
		sent := time.Now()
		rctx, cancel := context.WithDeadline(ctx, expires)
		next, err := e.kv.Update(rctx, e.role, e.value(), rev)
		cancel()
		switch {
		case err == nil:
			rev, renewed = next, sent
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyNotFound):
			return rev
		default:
			if ctx.Err() == nil {
				e.log.WarnContext(ctx, "renew lease", "err", err)
			}
		}
	}
}

// release deletes the lease's key if this replica still holds it.
func (e *Elector) release(rev uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := e.kv.Delete(ctx, e.role, jetstream.LastRevision(rev)); err != nil {
		e.log.Debug("give up lease", "err", err)
		return
	}
	e.log.Info("lease given up")
}

// Leader returns who holds role's lease, if anyone.
func Leader(ctx context.Context, kv jetstream.KeyValue, role string) (Holder, bool, error) {
	e, err := kv.Get(ctx, role)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Holder{}, false, nil
	}
	if err != nil {
		return Holder{}, false, err
	}
	var h Holder
	if err := json.Unmarshal(e.Value(), &h); err != nil {
		return Holder{}, false, fmt.Errorf("decode lease %s: %w", role, err)
	}
	return h, true, nil
}
