package billing

import (
	"context"
	"sync"
)

// localLocks is Locks within one process: enough for one billing process
// and for tests, not for several.
type localLocks struct {
	mu    sync.Mutex
	locks map[string]chan struct{}
}

// Hold implements Locks.
func (l *localLocks) Hold(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[string]chan struct{}{}
	}
	ch, ok := l.locks[name]
	if !ok {
		ch = make(chan struct{}, 1)
		l.locks[name] = ch
	}
	l.mu.Unlock()
	select {
	case ch <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-ch }()
	return fn(ctx)
}
