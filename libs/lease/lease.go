// Package lease keeps work to one process at a time with leases in a
// JetStream key-value bucket (state.BucketLeases): one leading replica of
// the deployer and of the scaler, one billing process migrating the
// schema or running the scheduled jobs. A lease is the key
// "<service>.<name>": the process that creates it holds it, writes it
// again while it holds it, and deletes it when done; the bucket's TTL
// removes the key of a holder that died, so another process takes over
// within the TTL.
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
	"github.com/modelport/modelport/libs/errs"
	"github.com/nats-io/nats.go/jetstream"
)

// Holder is what a lease's key holds: who holds it and since when.
type Holder struct {
	ID    string    `json:"id"`
	Since time.Time `json:"since"`
}

// NewHolderID returns an ID for this process: its host name and a random
// suffix, so processes on one host differ.
func NewHolderID() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%s", host, uuid.NewString()[:8])
}

// Key is the key of service's lease name: "<service>.<name>". Each
// service's NATS identity may write only its own keys.
func Key(service, name string) string { return service + "." + name }

// Leases takes and keeps one service's leases in the name of one holder.
// The bucket's TTL must be TTL: a key is removed TTL after its last write.
// Its methods are safe for concurrent use.
type Leases struct {
	kv      jetstream.KeyValue
	service string
	holder  string
	log     *slog.Logger
	// TTL is the bucket's TTL. A holder that has not renewed a lease for
	// TTL less Margin gives it up on its own (the context its work runs
	// with ends), before any other process can take the key over, so two
	// never hold it at once.
	TTL, Margin time.Duration
	// Renew is how often a holder renews a lease; Retry how often a
	// process waiting for one tries to take it.
	Renew, Retry time.Duration
}

// New returns service's leases on kv, a bucket whose TTL is ttl, held in
// the name of holder.
func New(kv jetstream.KeyValue, service, holder string, ttl time.Duration, log *slog.Logger) *Leases {
	return &Leases{
		kv: kv, service: service, holder: holder, log: log.With("holder", holder),
		TTL: ttl, Margin: ttl / 3, Renew: ttl / 6, Retry: ttl / 6,
	}
}

// errLost is the cause of a lease context that ended because the lease
// was lost: taken over, or not renewed in time.
var errLost = errors.New("lease lost")

// Hold waits for the lease name, runs fn with a context that ends if the
// lease is lost, and gives the lease back. It returns fn's error, or an
// errs.Unavailable one if ctx ended while it waited or the lease was lost
// while fn ran.
func (l *Leases) Hold(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	for {
		held, err := l.TryHold(ctx, name, fn)
		if held || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return errs.Wrap(errs.Unavailable, ctx.Err(), "waiting for the %s lease", Key(l.service, name))
		case <-time.After(l.Retry):
		}
	}
}

// TryHold runs fn under the lease name if it can be had now, as Hold does;
// held is false (and fn not run) when another process holds it. A lease
// this holder could not give back (NATS out of reach then) is taken up
// again at once. The lease is renewed while fn runs; a renewal refused
// because the key changed means another process holds it, and renewals
// that fail otherwise (NATS out of reach) are retried until the lease may
// have expired, less the margin: either ends fn's context, with the cause
// errors.Is errLost. When fn returns, the lease is given back, unless it
// was lost.
func (l *Leases) TryHold(ctx context.Context, name string, fn func(ctx context.Context) error) (held bool, err error) {
	key := Key(l.service, name)
	sent := time.Now()
	rev, ok, err := l.take(ctx, key)
	if !ok || err != nil {
		return false, err
	}
	lctx, lose := context.WithCancelCause(ctx)
	defer lose(nil)
	stop, renewed := make(chan struct{}), make(chan uint64, 1)
	go func() { renewed <- l.keep(lctx, stop, key, rev, sent, lose) }()
	err = fn(lctx)
	close(stop)
	rev = <-renewed
	if cause := context.Cause(lctx); lctx.Err() != nil && errors.Is(cause, errLost) {
		if err == nil {
			err = errs.Wrap(errs.Unavailable, cause, "the %s lease", key)
		}
		return true, err
	}
	l.giveBack(ctx, key, rev)
	return true, err
}

// Lead campaigns for the lease name until ctx ends: each time it wins the
// lease it calls lead with a context that ends when the lease is lost (or
// ctx ends), and waits for lead to return before it campaigns again, so a
// process never leads twice at once. When ctx ends while it leads, it
// gives the lease up, so another process takes over at once.
func (l *Leases) Lead(ctx context.Context, name string, lead func(ctx context.Context)) {
	log := l.log.With("lease", Key(l.service, name))
	for ctx.Err() == nil {
		held, err := l.TryHold(ctx, name, func(ctx context.Context) error {
			log.InfoContext(ctx, "leading")
			lead(ctx)
			return nil
		})
		switch {
		case ctx.Err() != nil:
			return
		case held && err != nil:
			log.WarnContext(ctx, "lease lost; following", "err", err)
			continue
		case held:
			log.InfoContext(ctx, "stopped leading; campaigning again")
			continue
		case err != nil:
			log.DebugContext(ctx, "campaign", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(l.Retry):
		}
	}
}

func (l *Leases) value() []byte {
	b, _ := json.Marshal(Holder{ID: l.holder, Since: time.Now().UTC()})
	return b
}

// take creates the lease's key if no one holds it, or takes it up again
// if this holder still does, and returns its revision.
func (l *Leases) take(ctx context.Context, key string) (uint64, bool, error) {
	tctx, cancel := context.WithTimeout(ctx, l.Retry+time.Second)
	defer cancel()
	rev, err := l.kv.Create(tctx, key, l.value())
	if err == nil {
		return rev, true, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return 0, false, errs.Wrap(errs.Unavailable, err, "take the %s lease", key)
	}
	e, err := l.kv.Get(tctx, key)
	if err != nil {
		return 0, false, nil // gone meanwhile, or out of reach: try again later
	}
	var h Holder
	if json.Unmarshal(e.Value(), &h) != nil || h.ID != l.holder {
		return 0, false, nil
	}
	if rev, err = l.kv.Update(tctx, key, l.value(), e.Revision()); err != nil {
		return 0, false, nil
	}
	return rev, true, nil
}

// keep renews the lease until stop is closed, and returns its last
// revision; when the lease is lost it calls lose with errLost. Expiry
// counts from when the last successful write was sent, which is no later
// than the server's time of it, from which the bucket's TTL counts.
func (l *Leases) keep(ctx context.Context, stop <-chan struct{}, key string, rev uint64, renewed time.Time, lose context.CancelCauseFunc) uint64 {
	t := time.NewTicker(l.Renew)
	defer t.Stop()
	for {
		expires := renewed.Add(l.TTL - l.Margin)
		select {
		case <-stop:
			return rev
		case <-ctx.Done():
			<-stop
			return rev
		case <-time.After(time.Until(expires)):
			l.log.Warn("lease not renewed in time", "lease", key)
			lose(fmt.Errorf("%w: %s not renewed in time", errLost, key))
			<-stop
			return rev
		case <-t.C:
		}
		sent := time.Now()
		// Not on ctx: a renewal the server makes must be seen, or the
		// lease could not be given back.
		rctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), expires)
		next, err := l.kv.Update(rctx, key, l.value(), rev)
		cancel()
		switch {
		case err == nil:
			rev, renewed = next, sent
		case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyExists), errors.Is(err, jetstream.ErrKeyNotFound):
			lose(fmt.Errorf("%w: %s taken over: %v", errLost, key, err))
			<-stop
			return rev
		default:
			if ctx.Err() == nil {
				l.log.Warn("renew lease", "lease", key, "err", err)
			}
		}
	}
}

// giveBack deletes the lease's key if this holder still holds it.
func (l *Leases) giveBack(ctx context.Context, key string, rev uint64) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := l.kv.Delete(dctx, key, jetstream.LastRevision(rev)); err != nil {
		l.log.Debug("give up lease", "lease", key, "err", err)
		return
	}
	l.log.Debug("lease given up", "lease", key)
}

// Leader returns who holds the lease with the given key, if anyone.
func Leader(ctx context.Context, kv jetstream.KeyValue, key string) (Holder, bool, error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Holder{}, false, nil
	}
	if err != nil {
		return Holder{}, false, err
	}
	var h Holder
	if err := json.Unmarshal(e.Value(), &h); err != nil {
		return Holder{}, false, fmt.Errorf("decode lease %s: %w", key, err)
	}
	return h, true, nil
}
