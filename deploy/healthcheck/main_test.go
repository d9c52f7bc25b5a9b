package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestTarget(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		addr string
		want string
		err  string
	}{
		{name: "every interface", addr: ":8080", want: "http://127.0.0.1:8080/healthz"},
		{name: "IPv4 wildcard", addr: "0.0.0.0:9000", want: "http://127.0.0.1:9000/healthz"},
		{name: "IPv6 wildcard", addr: "[::]:8080", want: "http://127.0.0.1:8080/healthz"},
		{name: "one interface", addr: "10.0.0.7:8080", want: "http://10.0.0.7:8080/healthz"},
		{name: "IPv6 interface", addr: "[fd00::1]:8080", want: "http://[fd00::1]:8080/healthz"},
		{name: "URL argument wins", args: []string{"http://x:1/ready"}, addr: ":8080", want: "http://x:1/ready"},
		{name: "unset", err: "MODELPORT_HTTP_ADDR is not set"},
		{name: "no port", addr: "localhost", err: "missing port"},
		{name: "any port", addr: "127.0.0.1:0", err: "no fixed port"},
		{name: "two arguments", args: []string{"a", "b"}, err: "usage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := target(tc.args, func(name string) string {
				if name == "MODELPORT_HTTP_ADDR" {
					return tc.addr
				}
				return ""
			})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("target() = %q, %v; want an error containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("target() = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestRun(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	env := func(name string) string {
		if name == "MODELPORT_HTTP_ADDR" {
			return ":" + port
		}
		return ""
	}
	if err := run(context.Background(), nil, env); err != nil {
		t.Errorf("healthy service: %v", err)
	}
	status = http.StatusServiceUnavailable
	if err := run(context.Background(), nil, env); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("unhealthy service: %v, want an error naming 503", err)
	}
	srv.Close()
	if err := run(context.Background(), nil, env); err == nil {
		t.Error("stopped service: no error")
	}
}
