package deploy

import (
	"context"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// repoRoot is the repository root, where docker-compose.yml is.
const repoRoot = ".."

// envExample is the settings file users copy to .env.
var envExample = filepath.Join("compose", ".env.example")

// composeSets are the ways the Compose files are meant to be used: the
// root file alone, and with each override under compose/ on top.
func composeSets(t *testing.T) [][]string {
	t.Helper()
	root := filepath.Join(repoRoot, "docker-compose.yml")
	sets := [][]string{{root}}
	overrides, err := filepath.Glob(filepath.Join("compose", "*.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(overrides) == 0 {
		t.Fatal("no Compose override under compose/")
	}
	for _, o := range overrides {
		sets = append(sets, []string{root, o})
	}
	return sets
}

// loadCompose loads files as `docker compose -f ... --env-file .env.example`
// would: with the Compose specification's loader, schema validation and
// consistency checks on, and the settings from the example file only (not
// this process's environment).
func loadCompose(t *testing.T, files []string, envFiles ...string) (*types.Project, error) {
	t.Helper()
	abs := make([]string, len(files))
	for i, f := range files {
		a, err := filepath.Abs(f)
		if err != nil {
			t.Fatal(err)
		}
		abs[i] = a
	}
	wd, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cli.NewProjectOptions(abs,
		cli.WithWorkingDirectory(wd),
		cli.WithEnvFiles(envFiles...),
		cli.WithDotEnv,
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return nil, err
	}
	return opts.LoadProject(context.Background())
}

// TestCompose loads every Compose file with the specification's loader,
// fails on any error, and checks what the loader does not: that services,
// volumes and files named exist, that published ports do not collide, that
// every service has a health check and waits for healthy dependencies, and
// that each Modelport service gets exactly settings it reads.
func TestCompose(t *testing.T) {
	for _, files := range composeSets(t) {
		var names []string
		for _, f := range files {
			names = append(names, filepath.Base(f))
		}
		t.Run(strings.Join(names, "+"), func(t *testing.T) {
			p, err := loadCompose(t, files, envExample)
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			checkProject(t, p)
		})
	}
}

// TestComposeNeedsAdminKey checks that no admin key ships: without one the
// Compose file refuses to load, naming the setting.
func TestComposeNeedsAdminKey(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty.env")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, files := range composeSets(t) {
		_, err := loadCompose(t, files, empty)
		if err == nil || !strings.Contains(err.Error(), "MODELPORT_ADMIN_KEY") {
			t.Errorf("%v without MODELPORT_ADMIN_KEY: %v, want an error naming it", files, err)
		}
	}
}

func checkProject(t *testing.T, p *types.Project) {
	if len(p.DisabledServices) > 0 {
		t.Errorf("services behind profiles are not checked here: %v", slices.Sorted(maps.Keys(p.DisabledServices)))
	}
	natsServers := map[string]bool{}
	for name, s := range p.Services {
		if strings.HasPrefix(s.Image, "nats:") {
			natsServers[name] = true
		}
	}
	if len(natsServers) == 0 {
		t.Fatal("no NATS server")
	}
	published := map[string]string{} // host address and port -> service
	workerIDs := map[string]string{}
	modelport := map[string]int{}
	for _, name := range slices.Sorted(maps.Keys(p.Services)) {
		s := p.Services[name]
		where := "service " + name

		// Everything a service names exists.
		for dep, d := range s.DependsOn {
			if _, ok := p.Services[dep]; !ok {
				t.Errorf("%s depends on missing service %s", where, dep)
			}
			if d.Condition != types.ServiceConditionHealthy {
				t.Errorf("%s waits for %s to be %q, want %q", where, dep, d.Condition, types.ServiceConditionHealthy)
			}
		}
		for _, l := range s.Links {
			if _, ok := p.Services[strings.Split(l, ":")[0]]; !ok {
				t.Errorf("%s links missing service %s", where, l)
			}
		}
		for _, v := range s.VolumesFrom {
			if _, ok := p.Services[strings.Split(v, ":")[0]]; !ok {
				t.Errorf("%s takes volumes from missing service %s", where, v)
			}
		}
		if other, ok := strings.CutPrefix(s.NetworkMode, "service:"); ok {
			if _, ok := p.Services[other]; !ok {
				t.Errorf("%s shares the network of missing service %s", where, other)
			}
		}
		for _, v := range s.Volumes {
			switch v.Type {
			case types.VolumeTypeVolume:
				if _, ok := p.Volumes[v.Source]; !ok {
					t.Errorf("%s mounts undeclared volume %q", where, v.Source)
				}
			case types.VolumeTypeBind:
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s mounts %s, which does not exist: %v", where, v.Source, err)
				}
			}
		}

		// Every service has a health check, so depends_on can wait for it.
		if s.HealthCheck == nil || s.HealthCheck.Disable || len(s.HealthCheck.Test) == 0 {
			t.Errorf("%s has no health check", where)
		}

		// Published ports: one service per host address and port.
		for _, port := range s.Ports {
			if port.Published == "" {
				continue
			}
			key := net.JoinHostPort(port.HostIP, port.Published) + "/" + port.Protocol
			if other, ok := published[key]; ok {
				t.Errorf("%s and %s both publish %s", where, other, key)
			}
			published[key] = name
		}

		svc, ok := serviceOf(s.Image)
		if !ok {
			t.Errorf("%s runs unknown Modelport image %s", where, s.Image)
		}
		if svc == "" {
			continue
		}
		modelport[svc]++
		env := map[string]bool{}
		for k := range s.Environment {
			env[k] = true
		}
		checkEnv(t, where, svc, env)
		value := func(k string) string {
			if v := s.Environment[k]; v != nil {
				return *v
			}
			return ""
		}

		// The service listens on every interface, on the port it publishes
		// and its health check asks.
		host, port, err := net.SplitHostPort(value("MODELPORT_HTTP_ADDR"))
		if err != nil || (host != "" && host != "0.0.0.0") || port == "0" {
			t.Errorf("%s: MODELPORT_HTTP_ADDR %q, want \":<port>\"", where, value("MODELPORT_HTTP_ADDR"))
		}
		for _, pc := range s.Ports {
			if strconv.Itoa(int(pc.Target)) != port {
				t.Errorf("%s publishes container port %d; it listens on %s", where, pc.Target, port)
			}
		}
		if s.HealthCheck != nil && !slices.Equal(s.HealthCheck.Test, []string{"CMD", "/usr/local/bin/healthcheck"}) {
			t.Errorf("%s health check %v, want the image's healthcheck binary", where, s.HealthCheck.Test)
		}

		// It is built from its Dockerfile, in the repository root.
		if s.Build == nil {
			t.Errorf("%s has no build section", where)
		} else {
			wantContext, _ := filepath.Abs(repoRoot)
			if s.Build.Context != wantContext {
				t.Errorf("%s builds in %s, want the repository root (go.work)", where, s.Build.Context)
			}
			if want := filepath.Join("services", svc, "Dockerfile"); s.Build.Dockerfile != want {
				t.Errorf("%s builds from %s, want %s", where, s.Build.Dockerfile, want)
			}
		}

		// It waits for, and reaches, NATS; with as many servers as replicas.
		urls := strings.Split(value("MODELPORT_NATS_URL"), ",")
		for _, u := range urls {
			host, port := urlHostPort(t, where, u)
			if !natsServers[host] || port != "4222" {
				t.Errorf("%s: NATS URL %s is not a NATS server of this project on 4222", where, u)
			}
		}
		if len(urls) != len(natsServers) {
			t.Errorf("%s lists %d NATS servers of %d", where, len(urls), len(natsServers))
		}
		replicas := 1
		if r := value("MODELPORT_JETSTREAM_REPLICAS"); r != "" {
			if replicas, err = strconv.Atoi(r); err != nil {
				t.Errorf("%s: MODELPORT_JETSTREAM_REPLICAS %q", where, r)
			}
		}
		if replicas > len(natsServers) || (len(natsServers) >= 3 && replicas < 3) {
			t.Errorf("%s: %d JetStream replicas on %d NATS servers", where, replicas, len(natsServers))
		}
		for server := range natsServers {
			if _, ok := s.DependsOn[server]; !ok {
				t.Errorf("%s does not wait for NATS server %s", where, server)
			}
		}

		switch svc {
		case "billing":
			host, port, err := net.SplitHostPort(value("MODELPORT_CLICKHOUSE_ADDR"))
			if err != nil || port != "9000" || !strings.HasPrefix(p.Services[host].Image, "clickhouse/") {
				t.Errorf("%s: MODELPORT_CLICKHOUSE_ADDR %q is not a ClickHouse service's Native port", where, value("MODELPORT_CLICKHOUSE_ADDR"))
			}
			if _, ok := s.DependsOn[host]; !ok {
				t.Errorf("%s does not wait for %s", where, host)
			}
		case "inference-worker":
			id := value("MODELPORT_WORKER_ID")
			if other, ok := workerIDs[id]; ok {
				t.Errorf("%s and %s are both worker %q", where, other, id)
			}
			workerIDs[id] = name
			if adv := value("MODELPORT_WORKER_ADVERTISE_HOST"); adv != name && adv != s.Hostname {
				t.Errorf("%s advertises %q, which is not its name on the network", where, adv)
			}
			if v := value("MODELPORT_WORKER_LISTEN_HOST"); v != "0.0.0.0" {
				t.Errorf("%s: instances listen on %q, out of the router's reach", where, v)
			}
			ports := value("MODELPORT_WORKER_PORTS")
			if !slices.Contains(s.Expose, ports) {
				t.Errorf("%s: instance ports %s are not exposed (%v)", where, ports, s.Expose)
			}
			first, last, _ := strings.Cut(ports, "-")
			a, _ := strconv.Atoi(first)
			b, _ := strconv.Atoi(last)
			capacity, err := strconv.Atoi(value("MODELPORT_WORKER_CAPACITY"))
			if err != nil || capacity < 1 || capacity > b-a+1 {
				t.Errorf("%s: capacity %q for %d ports", where, value("MODELPORT_WORKER_CAPACITY"), b-a+1)
			}
		}
	}
	for _, svc := range services {
		if modelport[svc] == 0 {
			t.Errorf("no %s", svc)
		}
	}
	if modelport["inference-worker"] < 2 {
		t.Errorf("%d inference workers, want at least 2", modelport["inference-worker"])
	}

	// NATS and ClickHouse keep their data in volumes.
	for server := range natsServers {
		if !mountsVolume(p.Services[server], "/data") {
			t.Errorf("NATS server %s keeps no volume at /data", server)
		}
	}
	clickhouse := 0
	for name, s := range p.Services {
		if strings.HasPrefix(s.Image, "clickhouse/") {
			clickhouse++
			if !mountsVolume(s, "/var/lib/clickhouse") {
				t.Errorf("ClickHouse %s keeps no volume at /var/lib/clickhouse", name)
			}
		}
	}
	if clickhouse != 1 {
		t.Errorf("%d ClickHouse servers, want 1", clickhouse)
	}
}

func mountsVolume(s types.ServiceConfig, target string) bool {
	for _, v := range s.Volumes {
		if v.Type == types.VolumeTypeVolume && v.Target == target {
			return true
		}
	}
	return false
}

func urlHostPort(t *testing.T, where, raw string) (host, port string) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "nats" {
		t.Errorf("%s: %q is not a nats:// URL", where, raw)
		return "", ""
	}
	return u.Hostname(), u.Port()
}

// TestComposeSettingsFile checks the example settings file against the
// Compose files: each setting in it is used, and each variable the files
// use without a default is in it.
func TestComposeSettingsFile(t *testing.T) {
	example, err := os.ReadFile(envExample)
	if err != nil {
		t.Fatal(err)
	}
	inExample := map[string]bool{}
	for _, line := range strings.Split(string(example), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("%s: %q is not NAME=value", envExample, line)
			continue
		}
		inExample[k] = true
	}
	used := map[string]bool{}
	variable := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?`)
	// Secrets made from a setting (secrets: x: environment: NAME) need it.
	secretSource := regexp.MustCompile(`(?m)^\s+environment:\s+([A-Z][A-Z0-9_]*)\s*$`)
	files := []string{filepath.Join(repoRoot, "docker-compose.yml")}
	overrides, _ := filepath.Glob(filepath.Join("compose", "*.yml"))
	for _, f := range append(files, overrides...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range variable.FindAllStringSubmatch(string(b), -1) {
			used[m[1]] = true
			if m[2] == "" && !inExample[m[1]] {
				t.Errorf("%s uses ${%s} with no default, and %s does not set it", f, m[1], envExample)
			}
		}
		for _, m := range secretSource.FindAllStringSubmatch(string(b), -1) {
			used[m[1]] = true
			if !inExample[m[1]] {
				t.Errorf("%s makes a secret from %s, and %s does not set it", f, m[1], envExample)
			}
		}
	}
	for k := range inExample {
		if !used[k] {
			t.Errorf("%s sets %s, which no Compose file uses", envExample, k)
		}
	}
}
