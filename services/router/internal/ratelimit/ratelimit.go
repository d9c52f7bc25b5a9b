// Package ratelimit is the router's request and token budgets: per API key
// and per service, requests per minute and tokens per minute.
//
// Each budget is a bucket that holds one minute's worth and refills
// continuously, so a short burst up to the limit passes and a steady
// excess is refused with the time until the bucket has room again.
// Requests are taken from their bucket before a call is forwarded; tokens
// are known only once the engine has answered, so they are charged after
// it and may drive a bucket below zero, which refuses calls until the
// debt is paid back by time. The budgets live in this process: with N
// routers behind a load balancer a client can get up to N times a limit.
package ratelimit

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/errs"
)

// Config is the limits, each per minute; zero or less turns one off.
type Config struct {
	KeyRequests     int // MODELPORT_RATE_LIMIT_RPM
	KeyTokens       int // MODELPORT_RATE_LIMIT_TPM
	ServiceRequests int // MODELPORT_SERVICE_RATE_LIMIT_RPM
	ServiceTokens   int // MODELPORT_SERVICE_RATE_LIMIT_TPM
}

// ErrRequests and ErrTokens are the causes of the errs.RateLimited errors
// the Limiter returns, so an edge can tell a spent request budget from a
// spent token budget (OpenAI's error types "requests" and "tokens").
var (
	ErrRequests = errors.New("requests per minute")
	ErrTokens   = errors.New("tokens per minute")
)

// sweepEvery is how often buckets that have refilled completely, and so
// hold nothing a new bucket would not, are dropped.
const sweepEvery = time.Minute

// Limiter enforces a Config. It is safe for concurrent use.
type Limiter struct {
	cfg Config
	now func() time.Time

	mu         sync.Mutex
	keyReq     map[string]*bucket
	keyTok     map[string]*bucket
	serviceReq map[string]*bucket
	serviceTok map[string]*bucket
	swept      time.Time
}

// New returns a Limiter for cfg that reads the time from now (time.Now
// when nil; tests pass a fake clock).
func New(cfg Config, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{cfg: cfg, now: now, swept: now(),
		keyReq: map[string]*bucket{}, keyTok: map[string]*bucket{},
		serviceReq: map[string]*bucket{}, serviceTok: map[string]*bucket{}}
}

// Config returns the limits l enforces.
func (l *Limiter) Config() Config { return l.cfg }

// Request takes one request from the key's budget. It returns nil, or an
// errs.RateLimited error whose RetryAfter says when one will be free
// (taking none). The router calls it for every authenticated request.
func (l *Limiter) Request(keyID string) error {
	if l.cfg.KeyRequests <= 0 {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.tick()
	b := get(l.keyReq, keyID, l.cfg.KeyRequests, now)
	if wait := b.wait(l.cfg.KeyRequests); wait > 0 {
		return refusal(ErrRequests, wait, "%d requests per minute for this API key", l.cfg.KeyRequests)
	}
	b.level--
	return nil
}

// Admit decides whether a call by keyID to the service serviceID (whose
// access name is for messages) may go ahead: the key and the service must
// each have tokens left, and the service a request, which Admit takes.
// When more than one budget is spent, the error names the one that frees
// up last, so a retry after RetryAfter is not refused by another.
func (l *Limiter) Admit(keyID, serviceID, accessName string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.tick()
	var worst error
	var longest time.Duration
	check := func(limit int, m map[string]*bucket, id string, cause error, format string, args ...any) *bucket {
		if limit <= 0 {
			return nil
		}
		b := get(m, id, limit, now)
		if wait := b.wait(limit); wait > longest {
			longest, worst = wait, refusal(cause, wait, format, args...)
		}
		return b
	}
	check(l.cfg.KeyTokens, l.keyTok, keyID, ErrTokens, "%d tokens per minute for this API key", l.cfg.KeyTokens)
	check(l.cfg.ServiceTokens, l.serviceTok, serviceID, ErrTokens, "%d tokens per minute for the model %s", l.cfg.ServiceTokens, accessName)
	req := check(l.cfg.ServiceRequests, l.serviceReq, serviceID, ErrRequests, "%d requests per minute for the model %s", l.cfg.ServiceRequests, accessName)
	if worst != nil {
		return worst
	}
	if req != nil {
		req.level--
	}
	return nil
}

// Charge takes the tokens a call used from its key's and its service's
// budgets, once the engine has reported them. A budget may go below zero:
// calls are then refused until it has refilled to one token.
func (l *Limiter) Charge(keyID, serviceID string, tokens int) {
	if tokens <= 0 || l.cfg.KeyTokens <= 0 && l.cfg.ServiceTokens <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.tick()
	if l.cfg.KeyTokens > 0 {
		get(l.keyTok, keyID, l.cfg.KeyTokens, now).level -= float64(tokens)
	}
	if l.cfg.ServiceTokens > 0 {
		get(l.serviceTok, serviceID, l.cfg.ServiceTokens, now).level -= float64(tokens)
	}
}

// refusal is the error for a spent budget.
func refusal(cause error, wait time.Duration, format string, args ...any) error {
	return &errs.Error{Kind: errs.RateLimited, Err: cause, RetryAfter: wait,
		Msg: fmt.Sprintf("Rate limit reached: "+format+". Please try again in %s.", append(args, roundUp(wait))...)}
}

// roundUp rounds d up to what a message shows: whole seconds, or
// milliseconds under a second.
func roundUp(d time.Duration) time.Duration {
	if d < time.Second {
		return (d + time.Millisecond - 1).Truncate(time.Millisecond)
	}
	return (d + time.Second - 1).Truncate(time.Second)
}

// tick returns the time and drops full buckets once per sweepEvery, so
// the maps hold only keys and services used in the last minute or so.
// l.mu must be held.
func (l *Limiter) tick() time.Time {
	now := l.now()
	if now.Sub(l.swept) < sweepEvery {
		return now
	}
	l.swept = now
	for _, s := range []struct {
		m     map[string]*bucket
		limit int
	}{{l.keyReq, l.cfg.KeyRequests}, {l.keyTok, l.cfg.KeyTokens}, {l.serviceReq, l.cfg.ServiceRequests}, {l.serviceTok, l.cfg.ServiceTokens}} {
		for id, b := range s.m {
			if b.refill(s.limit, now); b.level >= float64(s.limit) {
				delete(s.m, id)
			}
		}
	}
	return now
}

// bucket is one budget: level units left as of at.
type bucket struct {
	level float64
	at    time.Time
}

// get returns the bucket for id, a full one if it has none, refilled to now.
func get(m map[string]*bucket, id string, limit int, now time.Time) *bucket {
	b, ok := m[id]
	if !ok {
		b = &bucket{level: float64(limit), at: now}
		m[id] = b
	}
	b.refill(limit, now)
	return b
}

// refill adds what limit per minute gives for the time since b.at, up to
// one minute's worth. A clock that went backwards adds nothing.
func (b *bucket) refill(limit int, now time.Time) {
	if elapsed := now.Sub(b.at); elapsed > 0 {
		b.level = min(float64(limit), b.level+float64(limit)*elapsed.Minutes())
		b.at = now
	}
}

// wait returns 0 when b holds at least one unit, or how long until it
// will. A hair under one unit counts as one, so float rounding cannot
// refuse a retry made exactly when the last refusal said.
func (b *bucket) wait(limit int) time.Duration {
	if b.level >= 1-1e-9 {
		return 0
	}
	missing := 1 - b.level
	return max(time.Duration(missing/float64(limit)*float64(time.Minute)), time.Nanosecond)
}

// Failures counts failed authentications per client address, a minute's
// worth in a bucket that refills continuously, and refuses an address
// whose bucket is empty. The router asks it before checking a key, so a
// client that keeps sending made-up keys is refused without any key being
// looked at. It holds at most maxAddresses buckets, dropping full ones
// (and, past that, any) to make room, so a flood from many addresses
// cannot grow it without bound. It is safe for concurrent use; a nil
// Failures refuses nothing.
type Failures struct {
	perMinute int
	now       func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

// maxAddresses bounds the addresses Failures remembers.
const maxAddresses = 100_000

// NewFailures returns a Failures allowing perMinute failed
// authentications per address, or nil when perMinute is not positive. now
// is time.Now when nil.
func NewFailures(perMinute int, now func() time.Time) *Failures {
	if perMinute <= 0 {
		return nil
	}
	if now == nil {
		now = time.Now
	}
	return &Failures{perMinute: perMinute, now: now, buckets: map[string]*bucket{}, swept: now()}
}

// Allow returns nil, or an errs.RateLimited error with RetryAfter when addr
// has failed to authenticate perMinute times in the last minute or so.
func (f *Failures) Allow(addr string) error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	b, ok := f.buckets[addr]
	if !ok {
		return nil
	}
	b.refill(f.perMinute, now)
	if wait := b.wait(f.perMinute); wait > 0 {
		return refusal(ErrRequests, wait, "%d failed authentications per minute from this address", f.perMinute)
	}
	return nil
}

// Fail counts a failed authentication from addr.
func (f *Failures) Fail(addr string) {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	if _, ok := f.buckets[addr]; !ok && len(f.buckets) >= maxAddresses {
		f.sweep(now, true)
	} else if now.Sub(f.swept) >= sweepEvery {
		f.sweep(now, false)
	}
	get(f.buckets, addr, f.perMinute, now).level--
}

// sweep drops full buckets; when full, until there is room, any. f.mu is
// held.
func (f *Failures) sweep(now time.Time, full bool) {
	f.swept = now
	for addr, b := range f.buckets {
		if b.refill(f.perMinute, now); b.level >= float64(f.perMinute) {
			delete(f.buckets, addr)
		}
	}
	for addr := range f.buckets {
		if !full || len(f.buckets) < maxAddresses {
			break
		}
		delete(f.buckets, addr)
	}
}

// Len returns how many addresses it remembers.
func (f *Failures) Len() int {
	if f == nil {
		return 0
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.buckets)
}
