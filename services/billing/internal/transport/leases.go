package transport

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/billing/internal/billing"
	"github.com/nats-io/nats.go/jetstream"
)

// Leases implements billing.Locks on the leases bucket (state.BucketLeases):
// a lease is the key "billing.<name>", created by its holder (creation
// fails while it exists), written again every TTL/3 to keep it, and
// deleted when the work is done. A holder that dies loses its lease when
// the bucket's TTL expires the key. It is safe for concurrent use.
type Leases struct {
	kv     jetstream.KeyValue
	holder string
	ttl    time.Duration
	// Poll is how often a process waiting for a lease tries again.
	Poll time.Duration
}

var _ billing.Locks = (*Leases)(nil)

// NewLeases returns leases on kv, whose keys expire after ttl, held in
// the name of holder (written into the key, for whoever looks).
func NewLeases(kv jetstream.KeyValue, holder string, ttl time.Duration) *Leases {
	return &Leases{kv: kv, holder: holder, ttl: ttl, Poll: time.Second}
}

// errLeaseLost is the cause of a lease context that ended because the
// lease could not be renewed.
var errLeaseLost = errors.New("lease lost")

// Hold implements billing.Locks: it waits for the lease, runs fn with a
// context that ends if the lease is lost, and gives the lease back.
func (l *Leases) Hold(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	for {
		held, err := l.TryHold(ctx, name, fn)
		if held || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return errs.Wrap(errs.Unavailable, ctx.Err(), "waiting for the %s lease", name)
		case <-time.After(l.Poll):
		}
	}
}

// TryHold runs fn under the lease if it can be had now; held is false
// (and fn not run) when another process holds it.
func (l *Leases) TryHold(ctx context.Context, name string, fn func(ctx context.Context) error) (held bool, err error) {
	key := "billing." + name
	rev, err := l.kv.Create(ctx, key, []byte(l.holder))
	if errors.Is(err, jetstream.ErrKeyExists) {
		// Ours, should this process have failed to give it back (NATS
		// unreachable then): take it up again rather than wait for it
		// to expire.
		e, gerr := l.kv.Get(ctx, key)
		if gerr != nil || string(e.Value()) != l.holder {
			return false, nil
		}
		if rev, err = l.kv.Update(ctx, key, []byte(l.holder), e.Revision()); err != nil {
			return false, nil
		}
	} else if err != nil {
		return false, errs.Wrap(errs.Unavailable, err, "take the %s lease", name)
	}
	lctx, lose := context.WithCancelCause(ctx)
	defer lose(nil)
	stop, renewed := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(l.ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-lctx.Done():
				return
			case <-t.C:
				// Not on lctx: a renewal the server makes must be seen,
				// or the lease could not be given back.
				uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.ttl/3)
				r, err := l.kv.Update(uctx, key, []byte(l.holder), rev)
				cancel()
				if err != nil {
					lose(fmt.Errorf("%w: %s: %v", errLeaseLost, name, err))
					return
				}
				rev = r
			}
		}
	}()
	err = fn(lctx)
	close(stop)
	<-renewed
	// Give it back, unless it was lost (another process may hold it now).
	if cause := context.Cause(lctx); lctx.Err() != nil && errors.Is(cause, errLeaseLost) {
		if err == nil {
			err = errs.Wrap(errs.Unavailable, cause, "the %s lease", name)
		}
		return true, err
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	_ = l.kv.Delete(dctx, key, jetstream.LastRevision(rev))
	cancel()
	return true, err
}
