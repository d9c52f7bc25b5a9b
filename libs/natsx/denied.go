package natsx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/errs"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// recorder notes the permissions a server refuses a connection: it logs
// each with its subject, counts it in modelport.nats.permission_denied,
// and remembers the latest per subject so that a caller waiting for an
// answer that will never come (a refused publish gets none) can say why.
type recorder struct {
	name string
	log  *slog.Logger

	mu      sync.Mutex
	denied  map[string]time.Time             // "publish <subject>" or "subscribe <subject>"
	recent  []denial                         // the latest refusals, oldest first
	waiting map[*int]context.CancelCauseFunc // guarded calls, ended by a refusal
}

type denial struct {
	op, subject string
	at          time.Time
}

// recorders finds a connection's recorder.
var recorders sync.Map // *nats.Conn -> *recorder

func (r *recorder) register(nc *nats.Conn) { recorders.Store(nc, r) }

func recorderOf(nc *nats.Conn) *recorder {
	if nc == nil {
		return nil
	}
	r, _ := recorders.Load(nc)
	rec, _ := r.(*recorder)
	return rec
}

// violation matches the server's -ERR 'Permissions Violation for Publish
// to "x"' (or Subscription to "x").
var violation = regexp.MustCompile(`(?i)permissions violation for (publish|subscription) to "([^"]+)"`)

func (r *recorder) handle(nc *nats.Conn, sub *nats.Subscription, err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		if sub != nil {
			r.log.Warn("nats", "subject", sub.Subject, "err", err)
		} else {
			r.log.Warn("nats", "err", err)
		}
		return
	}
	op, subject := "publish", ""
	if m := violation.FindStringSubmatch(err.Error()); m != nil {
		subject = m[2]
		if strings.EqualFold(m[1], "subscription") {
			op = "subscribe"
		}
	}
	now := time.Now()
	r.mu.Lock()
	if r.denied == nil {
		r.denied = map[string]time.Time{}
	}
	r.denied[op+" "+subject] = now
	if len(r.recent) == 16 {
		r.recent = r.recent[1:]
	}
	r.recent = append(r.recent, denial{op, subject, now})
	for k, cancel := range r.waiting {
		cancel(fmt.Errorf("permission denied: NATS identity %s may not %s %s", r.name, op, subject))
		delete(r.waiting, k)
	}
	r.mu.Unlock()
	r.log.Error("nats permission denied", "identity", r.name, "operation", op, "subject", subject)
	instruments().denied.Add(context.Background(), 1, metric.WithAttributes(
		attribute.String("identity", r.name), attribute.String("operation", op), attribute.String("subject", subjectPattern(subject))))
}

// Guard returns a context that ends as soon as the server refuses the
// connection anything, so that a JetStream call whose request was refused
// (it gets no answer) fails at once instead of at its timeout; Explain
// then says what was refused. Call the returned function when done.
func Guard(ctx context.Context, nc *nats.Conn) (context.Context, func()) {
	r := recorderOf(nc)
	if r == nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	key := new(int)
	r.mu.Lock()
	if r.waiting == nil {
		r.waiting = map[*int]context.CancelCauseFunc{}
	}
	r.waiting[key] = cancel
	r.mu.Unlock()
	return ctx, func() {
		r.mu.Lock()
		delete(r.waiting, key)
		r.mu.Unlock()
		cancel(nil)
	}
}

// deniedSince reports whether publishing subject was refused at or after t.
func (r *recorder) deniedSince(subject string, t time.Time) bool {
	if r == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.denied["publish "+subject]
	return ok && !at.Before(t)
}

// firstSince returns the first refusal at or after t, if any; a refused
// subscription to the connection's own replies comes first, since nothing
// can work without them.
func (r *recorder) firstSince(t time.Time) (denial, bool) {
	if r == nil {
		return denial{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var first *denial
	for i := range r.recent {
		d := &r.recent[i]
		if d.at.Before(t) {
			continue
		}
		if d.op == "subscribe" && strings.HasPrefix(d.subject, access.InboxPrefix(r.name)+".") {
			return *d, true
		}
		if first == nil {
			first = d
		}
	}
	if first == nil {
		return denial{}, false
	}
	return *first, true
}

// Explain turns an error from a JetStream call that started at t into an
// errs.Forbidden error naming the refused subject, when the server refused
// the connection one meanwhile; otherwise it returns err.
func Explain(nc *nats.Conn, t time.Time, err error) error {
	if err == nil {
		return nil
	}
	r := recorderOf(nc)
	if d, ok := r.firstSince(t); ok {
		if d.op == "subscribe" && strings.HasPrefix(d.subject, access.InboxPrefix(r.name)+".") {
			return errs.Wrap(errs.Forbidden, err, "permission denied: NATS identity %s may not subscribe to its own replies (%s): are the credentials %s's?", r.name, d.subject, r.name)
		}
		return errs.Wrap(errs.Forbidden, err, "permission denied: NATS identity %s may not %s %s", r.name, d.op, d.subject)
	}
	return err
}

// subjectPattern shortens a subject to what a metric label may carry:
// the stream or bucket it is about, without keys, worker IDs or consumer
// sequence numbers.
func subjectPattern(subject string) string {
	t := strings.Split(subject, ".")
	keep := func(n int) string { return strings.Join(t[:min(n, len(t))], ".") }
	switch {
	case t[0] == "$KV" || t[0] == "$O":
		return keep(2)
	case t[0] == "$JS" && len(t) > 1 && t[1] == "API":
		if len(t) > 4 && t[2] == "CONSUMER" && t[3] == "MSG" {
			return keep(6)
		}
		return keep(5)
	case t[0] == "$JS" && len(t) > 1 && (t[1] == "ACK" || t[1] == "FC"):
		return keep(4)
	case strings.HasPrefix(t[0], "_INBOX"):
		return t[0]
	}
	return eventSubject(subject)
}

// describeDenied is the message for a refused publish of an event.
func describeDenied(name, subject string) string {
	return fmt.Sprintf("permission denied: NATS identity %s may not publish %s", name, subject)
}
