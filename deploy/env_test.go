package deploy

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/libs/runner"
	billing "github.com/modelport/modelport/services/billing/app"
	deployer "github.com/modelport/modelport/services/deployer/app"
	worker "github.com/modelport/modelport/services/inference-worker/app"
	router "github.com/modelport/modelport/services/router/app"
	scaler "github.com/modelport/modelport/services/scaler/app"
)

// services are the Modelport service binaries, by the name of their
// directory under services/ and of their image.
var services = []string{"deployer", "scaler", "router", "billing", "inference-worker"}

// images maps the repository part of each Modelport image to the service
// binary it runs.
var images = map[string]string{
	"modelport/deployer":              "deployer",
	"modelport/scaler":                "scaler",
	"modelport/router":                "router",
	"modelport/billing":               "billing",
	"modelport/inference-worker":      "inference-worker",
	"modelport/inference-worker-vllm": "inference-worker",
}

// serviceOf returns the service an image runs, from any registry, or ""
// for an image that is not Modelport's. ok is false for a modelport/
// image it does not know.
func serviceOf(image string) (svc string, ok bool) {
	repo := image
	if i := strings.LastIndex(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	if i := strings.LastIndex(repo, "/modelport/"); i >= 0 {
		repo = repo[i+1:]
	}
	if svc, ok := images[repo]; ok {
		return svc, true
	}
	return "", !strings.HasPrefix(repo, "modelport/")
}

// required are the settings a deployment must give each service, because
// their defaults only work on one machine: a loopback NATS, a loopback
// listener, a loopback ClickHouse, a worker reachable only on loopback.
var required = map[string][]string{
	"deployer":         {"MODELPORT_NATS_URL", "MODELPORT_HTTP_ADDR", "MODELPORT_ADMIN_KEY"},
	"scaler":           {"MODELPORT_NATS_URL", "MODELPORT_HTTP_ADDR"},
	"router":           {"MODELPORT_NATS_URL", "MODELPORT_HTTP_ADDR"},
	"billing":          {"MODELPORT_NATS_URL", "MODELPORT_HTTP_ADDR", "MODELPORT_CLICKHOUSE_ADDR"},
	"inference-worker": {"MODELPORT_NATS_URL", "MODELPORT_HTTP_ADDR", "MODELPORT_WORKER_ID", "MODELPORT_WORKER_ADVERTISE_HOST", "MODELPORT_WORKER_LISTEN_HOST", "MODELPORT_WORKER_PORTS"},
}

var (
	readsOnce sync.Once
	reads     map[string]map[string]bool
)

// settingsRead returns, for each service binary, the names of the
// environment variables it reads: the ones every binary reads
// (runner.CommonFromEnv) and its own (its app package's ConfigFromEnv).
// Both are run with a lookup that records each name asked for, so the
// list is the code's own and follows it.
func settingsRead() map[string]map[string]bool {
	readsOnce.Do(func() {
		reads = map[string]map[string]bool{}
		for _, svc := range services {
			seen := map[string]bool{}
			getenv := config.Getenv(func(name string) string {
				seen[name] = true
				return ""
			})
			_, _ = runner.CommonFromEnv(getenv, "")
			switch svc {
			case "deployer":
				deployer.ConfigFromEnv(getenv)
			case "scaler":
				_, _ = scaler.ConfigFromEnv(getenv)
			case "router":
				_, _ = router.ConfigFromEnv(getenv)
			case "billing":
				_, _ = billing.ConfigFromEnv(getenv)
			case "inference-worker":
				_, _ = worker.ConfigFromEnv(getenv)
			}
			reads[svc] = seen
		}
	})
	return reads
}

// TestSettingsRead checks the recorder itself: each service reads the
// common settings and some of its own, and the settings this test calls
// required are among them, so an empty or stale list cannot pass the
// deployment checks.
func TestSettingsRead(t *testing.T) {
	all := settingsRead()
	for _, svc := range services {
		got := all[svc]
		for _, name := range []string{"MODELPORT_NATS_URL", "MODELPORT_HTTP_ADDR", "MODELPORT_JETSTREAM_REPLICAS", "MODELPORT_LOG_LEVEL"} {
			if !got[name] {
				t.Errorf("%s: does not read %s; read: %v", svc, name, slices.Sorted(maps.Keys(got)))
			}
		}
		if len(got) <= 4 {
			t.Errorf("%s reads only %v, none of its own", svc, slices.Sorted(maps.Keys(got)))
		}
		for _, name := range required[svc] {
			if !got[name] {
				t.Errorf("%s: required setting %s is not one it reads", svc, name)
			}
		}
	}
	for image, svc := range images {
		if !slices.Contains(services, svc) {
			t.Errorf("image %s runs unknown service %s", image, svc)
		}
	}
	for _, tc := range []struct {
		image, svc string
		ok         bool
	}{
		{"modelport/router:dev", "router", true},
		{"registry.example.com:5000/modelport/router:1.2", "router", true},
		{"modelport/router@sha256:0123", "router", true},
		{"modelport/inference-worker-vllm:dev", "inference-worker", true},
		{"modelport/unknown:dev", "", false},
		{"nats:2.15.2-alpine", "", true},
		{"clickhouse/clickhouse-server:25.8", "", true},
	} {
		if svc, ok := serviceOf(tc.image); svc != tc.svc || ok != tc.ok {
			t.Errorf("serviceOf(%q) = %q, %v; want %q, %v", tc.image, svc, ok, tc.svc, tc.ok)
		}
	}
}

// checkEnv reports every MODELPORT_ variable in env that svc does not
// read, and every required one env lacks. where names the container in
// messages.
func checkEnv(t *testing.T, where, svc string, env map[string]bool) {
	t.Helper()
	read := settingsRead()[svc]
	for _, name := range slices.Sorted(maps.Keys(env)) {
		if strings.HasPrefix(name, "MODELPORT_") && !read[name] {
			t.Errorf("%s sets %s, which %s does not read (it reads %v)", where, name, svc, slices.Sorted(maps.Keys(read)))
		}
	}
	for _, name := range required[svc] {
		if !env[name] {
			t.Errorf("%s does not set %s, which %s needs outside one machine", where, name, svc)
		}
	}
}
