package app

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/services/router/internal/ratelimit"
)

func TestConfigFromEnv(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		c, err := ConfigFromEnv(config.Map(nil))
		if err != nil {
			t.Fatal(err)
		}
		if c.RateLimits != (ratelimit.Config{}) || c.BodyTimeout != time.Minute || c.ImageFetchTimeout != 10*time.Second ||
			c.MaxImageBytes != 20<<20 || c.AllowPrivateImageURLs || c.DialTimeout != 5*time.Second ||
			c.IdleTimeout != 5*time.Minute || c.KeepAlive != 15*time.Second || c.RequestMemory != 256<<20 ||
			c.AuthFailures != 60 || c.PublicURL != "" || c.AllowedHosts != nil || c.TrustedProxies != nil ||
			c.PrefixLoadFactor != 1.25 {
			t.Errorf("defaults: %+v", c)
		}
	})
	t.Run("set", func(t *testing.T) {
		c, err := ConfigFromEnv(config.Map(map[string]string{
			"MODELPORT_RATE_LIMIT_RPM": "60", "MODELPORT_RATE_LIMIT_TPM": "10000",
			"MODELPORT_SERVICE_RATE_LIMIT_RPM": "600", "MODELPORT_SERVICE_RATE_LIMIT_TPM": "100000",
			"MODELPORT_BODY_TIMEOUT": "30s", "MODELPORT_IMAGE_FETCH_TIMEOUT": "2s",
			"MODELPORT_IMAGE_MAX_BYTES": "1048576", "MODELPORT_ALLOW_PRIVATE_IMAGE_URLS": "1",
			"MODELPORT_PREFIX_LOAD_FACTOR":  "1.5",
			"MODELPORT_ENGINE_DIAL_TIMEOUT": "2s", "MODELPORT_ENGINE_IDLE_TIMEOUT": "90s", "MODELPORT_STREAM_KEEPALIVE": "5s",
			"MODELPORT_REQUEST_MEMORY": "134217728", "MODELPORT_AUTH_FAILURE_LIMIT": "0",
			"MODELPORT_PUBLIC_URL": "https://api.example.com/", "MODELPORT_ALLOWED_HOSTS": "api.example.com, router:8080",
			"MODELPORT_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7 ,::ffff:172.16.0.1",
		}))
		if err != nil {
			t.Fatal(err)
		}
		want := ratelimit.Config{KeyRequests: 60, KeyTokens: 10000, ServiceRequests: 600, ServiceTokens: 100000}
		if c.RateLimits != want || c.BodyTimeout != 30*time.Second || c.ImageFetchTimeout != 2*time.Second ||
			c.MaxImageBytes != 1<<20 || !c.AllowPrivateImageURLs || c.DialTimeout != 2*time.Second ||
			c.IdleTimeout != 90*time.Second || c.KeepAlive != 5*time.Second || c.RequestMemory != 128<<20 ||
			c.AuthFailures != 0 || c.PublicURL != "https://api.example.com" ||
			!slices.Equal(c.AllowedHosts, []string{"api.example.com", "router:8080"}) ||
			!slices.Equal(c.TrustedProxies, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.7/32"), netip.MustParsePrefix("172.16.0.1/32")}) ||
			c.PrefixLoadFactor != 1.5 {
			t.Errorf("got %+v", c)
		}
	})
	for _, tc := range []struct{ name, value string }{
		{"MODELPORT_RATE_LIMIT_TPM", "lots"},
		{"MODELPORT_SERVICE_RATE_LIMIT_RPM", "-1"},
		{"MODELPORT_IMAGE_FETCH_TIMEOUT", "0s"},
		{"MODELPORT_BODY_TIMEOUT", "-1s"},
		{"MODELPORT_IMAGE_MAX_BYTES", "0"},
		{"MODELPORT_PREFIX_LOAD_FACTOR", "0.9"},
		{"MODELPORT_PREFIX_LOAD_FACTOR", "twice"},
		{"MODELPORT_ENGINE_IDLE_TIMEOUT", "0s"},
		{"MODELPORT_ENGINE_DIAL_TIMEOUT", "soon"},
		{"MODELPORT_REQUEST_MEMORY", "1048576"},
		{"MODELPORT_AUTH_FAILURE_LIMIT", "-5"},
		{"MODELPORT_PUBLIC_URL", "api.example.com"},
		{"MODELPORT_PUBLIC_URL", "ftp://api.example.com"},
		{"MODELPORT_TRUSTED_PROXIES", "10.0.0.0/33"},
		{"MODELPORT_TRUSTED_PROXIES", "proxy.internal"},
	} {
		t.Run(tc.name+"="+tc.value, func(t *testing.T) {
			_, err := ConfigFromEnv(config.Map(map[string]string{tc.name: tc.value}))
			if err == nil || !strings.Contains(err.Error(), tc.name) {
				t.Errorf("err = %v, want one naming %s", err, tc.name)
			}
		})
	}
}
