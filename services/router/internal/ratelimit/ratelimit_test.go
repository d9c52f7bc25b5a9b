package ratelimit_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/router/internal/ratelimit"
)

// clock is a fake clock that moves only when told.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// refused fails unless err is a rate limit of the given cause whose
// RetryAfter is want, and whose message says what was hit.
func refused(t *testing.T, err error, cause error, want time.Duration, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("allowed; want refused (%v, retry after %v)", cause, want)
	}
	e, ok := errs.As(err)
	if !ok || e.Kind != errs.RateLimited {
		t.Fatalf("err = %v, want an errs.RateLimited error", err)
	}
	if !errors.Is(err, cause) {
		t.Errorf("err = %v, want cause %v", err, cause)
	}
	if diff := e.RetryAfter - want; diff < -time.Millisecond || diff > time.Millisecond {
		t.Errorf("RetryAfter = %v, want %v", e.RetryAfter, want)
	}
	if !strings.Contains(e.Msg, msg) {
		t.Errorf("message %q does not contain %q", e.Msg, msg)
	}
}

func allowed(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("refused: %v", err)
	}
}

func TestKeyRequests(t *testing.T) {
	c := newClock()
	l := ratelimit.New(ratelimit.Config{KeyRequests: 3}, c.Now)
	for i := range 3 {
		if err := l.Request("k1"); err != nil {
			t.Fatalf("request %d of a minute's burst: %v", i, err)
		}
	}
	// One request per 20s comes back; the bucket is empty.
	refused(t, l.Request("k1"), ratelimit.ErrRequests, 20*time.Second, "3 requests per minute for this API key")
	// A refusal takes nothing: after the wait it said, one passes.
	c.advance(19 * time.Second)
	refused(t, l.Request("k1"), ratelimit.ErrRequests, time.Second, "try again in 1s")
	c.advance(time.Second)
	allowed(t, l.Request("k1"))
	refused(t, l.Request("k1"), ratelimit.ErrRequests, 20*time.Second, "")

	// Keys have their own buckets.
	allowed(t, l.Request("k2"))

	// A long pause refills a minute's worth and no more.
	c.advance(time.Hour)
	for i := range 3 {
		if err := l.Request("k1"); err != nil {
			t.Fatalf("request %d after an hour: %v", i, err)
		}
	}
	refused(t, l.Request("k1"), ratelimit.ErrRequests, 20*time.Second, "")
}

func TestServiceRequests(t *testing.T) {
	c := newClock()
	l := ratelimit.New(ratelimit.Config{ServiceRequests: 2}, c.Now)
	// Two keys share the service's budget.
	allowed(t, l.Admit("k1", "s1", "u-a/chat"))
	allowed(t, l.Admit("k2", "s1", "u-a/chat"))
	refused(t, l.Admit("k3", "s1", "u-a/chat"), ratelimit.ErrRequests, 30*time.Second, "2 requests per minute for the model u-a/chat")
	// Another service has its own.
	allowed(t, l.Admit("k1", "s2", "u-a/other"))
	c.advance(30 * time.Second)
	allowed(t, l.Admit("k1", "s1", "u-a/chat"))
}

func TestTokens(t *testing.T) {
	t.Run("a key's budget, charged after the answer", func(t *testing.T) {
		c := newClock()
		l := ratelimit.New(ratelimit.Config{KeyTokens: 600}, c.Now) // 10 per second
		allowed(t, l.Admit("k1", "s1", "u-a/chat"))
		l.Charge("k1", "s1", 550)
		allowed(t, l.Admit("k1", "s1", "u-a/chat")) // 50 left
		l.Charge("k1", "s1", 100)                   // 50 in debt
		// Back to one token takes 51 tokens at 10 per second.
		refused(t, l.Admit("k1", "s1", "u-a/chat"), ratelimit.ErrTokens, 5100*time.Millisecond, "600 tokens per minute for this API key")
		// Other keys and the service itself are not limited.
		allowed(t, l.Admit("k2", "s1", "u-a/chat"))
		c.advance(5100 * time.Millisecond)
		allowed(t, l.Admit("k1", "s1", "u-a/chat"))
	})
	t.Run("a service's budget, shared by keys", func(t *testing.T) {
		c := newClock()
		l := ratelimit.New(ratelimit.Config{ServiceTokens: 60}, c.Now)
		allowed(t, l.Admit("k1", "s1", "u-a/chat"))
		l.Charge("k1", "s1", 60)
		refused(t, l.Admit("k2", "s1", "u-a/chat"), ratelimit.ErrTokens, time.Second, "60 tokens per minute for the model u-a/chat")
		allowed(t, l.Admit("k2", "s2", "u-a/other"))
	})
	t.Run("one answer larger than the budget is paid back by waiting", func(t *testing.T) {
		c := newClock()
		l := ratelimit.New(ratelimit.Config{KeyTokens: 60}, c.Now)
		allowed(t, l.Admit("k1", "s1", "m"))
		l.Charge("k1", "s1", 600)
		refused(t, l.Admit("k1", "s1", "m"), ratelimit.ErrTokens, 541*time.Second, "")
		c.advance(540 * time.Second)
		refused(t, l.Admit("k1", "s1", "m"), ratelimit.ErrTokens, time.Second, "")
		c.advance(time.Second)
		allowed(t, l.Admit("k1", "s1", "m"))
	})
	t.Run("nothing or less is no charge", func(t *testing.T) {
		c := newClock()
		l := ratelimit.New(ratelimit.Config{KeyTokens: 1}, c.Now)
		l.Charge("k1", "s1", 0)
		l.Charge("k1", "s1", -5)
		allowed(t, l.Admit("k1", "s1", "m"))
	})
}

func TestAdmitNamesTheLongestWait(t *testing.T) {
	c := newClock()
	l := ratelimit.New(ratelimit.Config{KeyTokens: 60, ServiceTokens: 600, ServiceRequests: 1}, c.Now)
	allowed(t, l.Admit("k1", "s1", "m"))
	l.Charge("k1", "s1", 70) // key: 11s to one token; service: 0
	// The service's request budget frees up in 60s, later than the key's tokens.
	refused(t, l.Admit("k1", "s1", "m"), ratelimit.ErrRequests, time.Minute, "1 requests per minute for the model m")
	c.advance(time.Minute)
	allowed(t, l.Admit("k1", "s1", "m"))
}

func TestRefusedAdmitTakesNoRequest(t *testing.T) {
	c := newClock()
	l := ratelimit.New(ratelimit.Config{KeyTokens: 60, ServiceRequests: 2}, c.Now)
	allowed(t, l.Admit("k1", "s1", "m"))
	l.Charge("k1", "s1", 60)
	// Refused for tokens: the service's second request stays free.
	refused(t, l.Admit("k1", "s1", "m"), ratelimit.ErrTokens, time.Second, "")
	allowed(t, l.Admit("k2", "s1", "m"))
}

func TestOff(t *testing.T) {
	c := newClock()
	l := ratelimit.New(ratelimit.Config{}, c.Now)
	for i := range 1000 {
		allowed(t, l.Request("k"))
		allowed(t, l.Admit("k", "s", "m"))
		l.Charge("k", "s", 1_000_000)
		if t.Failed() {
			t.Fatalf("call %d", i)
		}
	}
}

func TestSweepKeepsDebts(t *testing.T) {
	c := newClock()
	l := ratelimit.New(ratelimit.Config{KeyRequests: 1, KeyTokens: 60}, c.Now)
	allowed(t, l.Request("idle"))
	allowed(t, l.Admit("debtor", "s", "m"))
	l.Charge("debtor", "s", 6000) // 100 minutes of debt
	c.advance(2 * sweepEveryForTest)
	// The sweep drops the refilled bucket of "idle" (a fresh one is the
	// same) but must keep the debt.
	allowed(t, l.Request("idle"))
	refused(t, l.Admit("debtor", "s", "m"), ratelimit.ErrTokens, 5941*time.Second-2*sweepEveryForTest, "")
}

// sweepEveryForTest is the package's sweep interval.
const sweepEveryForTest = time.Minute

func TestConcurrent(t *testing.T) {
	c := newClock() // stopped: nothing refills while the goroutines run
	l := ratelimit.New(ratelimit.Config{KeyRequests: 100, KeyTokens: 1000, ServiceRequests: 100, ServiceTokens: 1000}, c.Now)
	var wg sync.WaitGroup
	var mu sync.Mutex
	passed := 0
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if l.Request("k") == nil {
					mu.Lock()
					passed++
					mu.Unlock()
				}
				if l.Admit("k", "s", "m") == nil {
					l.Charge("k", "s", 1)
				}
			}
		})
	}
	wg.Wait()
	if passed != 100 {
		t.Errorf("%d requests passed, want 100 (a minute's burst)", passed)
	}
}
