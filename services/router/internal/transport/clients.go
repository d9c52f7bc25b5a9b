package transport

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/services/router/internal/ratelimit"
)

// clients tells who sent a request: the connection's peer, or, when the
// peer is a trusted proxy, what the proxies in front said in
// X-Forwarded-For. X-Forwarded-Host and X-Forwarded-Proto are believed
// only from a trusted proxy too.
type clients struct {
	trusted []netip.Prefix
}

func (c clients) isTrusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range c.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// peer returns the address of the connection's other end.
func peer(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}

// viaProxy reports whether the request came through a trusted proxy.
func (c clients) viaProxy(r *http.Request) bool { return c.isTrusted(peer(r)) }

// addr returns the client's address: walking X-Forwarded-For from the
// nearest hop while the hops are trusted proxies, the first that is not.
func (c clients) addr(r *http.Request) netip.Addr {
	a := peer(r)
	if !c.isTrusted(a) {
		return a
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return a // an unreadable hop: the last one known
		}
		a = hop.Unmap()
		if !c.isTrusted(a) {
			return a
		}
	}
	return a
}

// forwarded returns the first value of a proxy's X-Forwarded- header, or
// "" when the request did not come through a trusted proxy.
func (c clients) forwarded(r *http.Request, name string) string {
	if !c.viaProxy(r) {
		return ""
	}
	v, _, _ := strings.Cut(r.Header.Get(name), ",")
	return strings.TrimSpace(v)
}

// limitFailures is the middleware, in front of authentication, that
// refuses the requests of a client address that has failed to
// authenticate too often of late, before its key is looked at: a flood of
// made-up keys costs the router a map lookup per request.
func limitFailures(f *ratelimit.Failures, c clients, log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if f == nil {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			addr := c.addr(r).String()
			if err := f.Allow(addr); err != nil {
				writeError(w, r, log, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), clientKey{}, addr)))
		})
	}
}

// countFailures verifies keys and counts each refused one against the
// client's address, which limitFailures put in the context.
type countFailures struct {
	keys     httpx.Verifier
	failures *ratelimit.Failures
}

func (v countFailures) Verify(ctx context.Context, secret string) (auth.Key, error) {
	k, err := v.keys.Verify(ctx, secret)
	if errs.KindOf(err) == errs.Unauthorized {
		if addr, ok := ctx.Value(clientKey{}).(string); ok {
			v.failures.Fail(addr)
		}
	}
	return k, err
}

// clientKey carries the client's address to countFailures, which sees
// only the context.
type clientKey struct{}

// baseURL is the address clients used to reach the router, for the URLs
// of generated images: the configured public URL; else the request's host
// (from a trusted proxy's X-Forwarded-Host, else Host) if it is allowed;
// else "", and URL answers are refused. The scheme is https for TLS or
// when a trusted proxy says so.
func (h *handler) baseURL(r *http.Request) string {
	if h.opts.PublicURL != "" {
		return h.opts.PublicURL
	}
	host := r.Host
	if fh := h.clients.forwarded(r, "X-Forwarded-Host"); fh != "" {
		host = fh
	}
	if !hostAllowed(host, h.opts.AllowedHosts) {
		return ""
	}
	scheme := "http"
	if r.TLS != nil || h.clients.forwarded(r, "X-Forwarded-Proto") == "https" {
		scheme = "https"
	}
	return scheme + "://" + host
}

// hostAllowed reports whether host (a Host header: name or address, with
// or without a port) is one allowed: an entry of allowed, which matches
// with any port unless it names one; or, with no list, a loopback name or
// address, for a router used on its own machine.
func hostAllowed(host string, allowed []string) bool {
	if host == "" || strings.ContainsAny(host, "/\\@ ") {
		return false
	}
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	name = strings.Trim(strings.ToLower(name), "[]")
	if len(allowed) == 0 {
		a, err := netip.ParseAddr(name)
		return name == "localhost" || err == nil && a.IsLoopback()
	}
	for _, e := range allowed {
		e = strings.ToLower(e)
		if e == strings.ToLower(host) || e == name || strings.Trim(e, "[]") == name {
			return true
		}
	}
	return false
}
