package deploy

import (
	"crypto/tls"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/tlstest"
	"github.com/nats-io/nats-server/v2/server"
	corev1 "k8s.io/api/core/v1"
)

// authConf is the nats-server authorization block every deployment
// includes: the permission table, public keys from the environment.
var authConf = access.AuthorizationConf(access.EnvNKeys())

// TestNATSAuthFiles checks the committed nats-server permissions against
// the permission table: regenerate them with `modelport nats conf` when
// the table changes.
func TestNATSAuthFiles(t *testing.T) {
	for _, f := range []string{filepath.Join("compose", "nats-auth.conf"), filepath.Join("k8s", "base", "nats-auth.conf")} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != authConf {
			t.Errorf("%s is not what the permission table gives: run `go run ./cmd/modelport nats conf > deploy/%s`", f, filepath.ToSlash(f))
		}
	}
	a, err := os.ReadFile(filepath.Join("compose", "clickhouse-users.sh"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join("k8s", "base", "clickhouse-users.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if string(a) != string(b) {
		t.Error("compose/clickhouse-users.sh and k8s/base/clickhouse-users.sh differ")
	}
	checkUsersScript(t, string(a))
}

// checkUsersScript checks the SQL that makes ClickHouse's users: billing's
// may not drop, alter or truncate beyond its rebuilt rollup; the analysts'
// only selects.
func checkUsersScript(t *testing.T, script string) {
	t.Helper()
	for _, want := range []string{
		"CREATE USER IF NOT EXISTS " + chlocal.BillingUser,
		"CREATE USER IF NOT EXISTS " + chlocal.AnalystUser,
		"SETTINGS readonly = 1",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("clickhouse-users.sh lacks %q", want)
		}
	}
	for _, line := range strings.Split(script, "\n") {
		if !strings.HasPrefix(line, "GRANT ") {
			continue
		}
		switch {
		case strings.Contains(line, "ALL") || strings.Contains(line, "DROP") || strings.Contains(line, "ALTER") || strings.Contains(line, "*.*"):
			t.Errorf("clickhouse-users.sh grants too much: %s", line)
		case strings.Contains(line, "TRUNCATE") && !strings.Contains(line, ".usage_hourly TO "):
			t.Errorf("clickhouse-users.sh grants TRUNCATE beyond the rebuilt rollup: %s", line)
		case strings.HasSuffix(line, "TO "+chlocal.AnalystUser+";") && !strings.HasPrefix(line, "GRANT SELECT ON "):
			t.Errorf("the analysts' user gets more than SELECT: %s", line)
		}
	}
}

// parseNATSConf parses a NATS server configuration as the server would,
// from files laid out as in its container (root stands in for /etc/nats),
// with a real public key in each MODELPORT_NKEY_* and real certificates
// where the configuration names /etc/nats/tls files, and checks that it
// admits each identity with its permissions and no one else.
func parseNATSConf(t *testing.T, where string, files map[string]string) *server.Options {
	t.Helper()
	root := t.TempDir()
	ca := tlstest.NewCA(t, "deploy test CA")
	pair := ca.Server(t, "nats")
	tlsFiles := map[string]string{"tls/ca.crt": ca.CertFile, "tls/tls.crt": pair.CertFile, "tls/tls.key": pair.KeyFile}
	for name, text := range files {
		text = strings.ReplaceAll(text, "/etc/nats/", root+"/")
		text = regexp.MustCompile(`store_dir:\s*\S+`).ReplaceAllString(text, "store_dir: "+filepath.Join(root, "store"))
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for name, src := range tlsFiles {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		_ = os.MkdirAll(filepath.Join(root, "tls"), 0o755)
		if err := os.WriteFile(filepath.Join(root, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pubs, err := access.EnsureSeeds(t.TempDir(), access.Names())
	if err != nil {
		t.Fatal(err)
	}
	for name, pub := range pubs {
		t.Setenv(access.NKeyVar(name), pub)
	}
	t.Setenv("SERVER_NAME", "test")
	var main string
	for name := range files {
		if !strings.Contains(name, "auth") {
			main = name
		}
	}
	opts, err := server.ProcessConfigFile(filepath.Join(root, main))
	if err != nil {
		t.Fatalf("%s: nats-server refuses its configuration: %v", where, err)
	}
	if len(opts.Users) > 0 || len(opts.Nkeys) != len(access.Identities) || opts.NoAuthUser != "" {
		t.Errorf("%s: the server admits %d users and %d NKeys (no-auth user %q), want exactly the %d identities", where, len(opts.Users), len(opts.Nkeys), opts.NoAuthUser, len(access.Identities))
	}
	for _, u := range opts.Nkeys {
		name := ""
		for n, pub := range pubs {
			if pub == u.Nkey {
				name = n
			}
		}
		id, ok := access.For(name)
		if !ok || u.Permissions == nil {
			t.Errorf("%s: NKey %s is no identity, or has no permissions", where, u.Nkey)
			continue
		}
		want := id.NATSPermissions()
		if !slices.Equal(u.Permissions.Publish.Allow, want.Publish.Allow) || !slices.Equal(u.Permissions.Publish.Deny, want.Publish.Deny) ||
			!slices.Equal(u.Permissions.Subscribe.Allow, want.Subscribe.Allow) {
			t.Errorf("%s: %s's permissions are not the table's", where, name)
		}
	}
	return opts
}

// TestComposeSecurity checks how the Compose files secure the platform:
// each service connects to NATS as its own identity, from a secret of its
// own; the NATS servers admit the identities alone, with the table's
// permissions; ClickHouse has no passwordless user, and billing logs in as
// its own.
func TestComposeSecurity(t *testing.T) {
	for _, files := range composeSets(t) {
		p, err := loadCompose(t, files, envExample)
		if err != nil {
			t.Fatalf("load %v: %v", files, err)
		}
		for _, name := range slices.Sorted(maps.Keys(p.Services)) {
			s := p.Services[name]
			where := "service " + name
			env := func(k string) string {
				if v := s.Environment[k]; v != nil {
					return *v
				}
				return ""
			}
			switch svc, _ := serviceOf(s.Image); {
			case svc != "":
				secret, ok := strings.CutPrefix(env("MODELPORT_NATS_NKEY"), "/run/secrets/")
				if !ok || !slices.ContainsFunc(s.Secrets, func(r types.ServiceSecretConfig) bool {
					return r.Source == secret && (r.Target == "" || r.Target == secret || r.Target == "/run/secrets/"+secret)
				}) {
					t.Errorf("%s: MODELPORT_NATS_NKEY %q is not one of its secrets", where, env("MODELPORT_NATS_NKEY"))
					continue
				}
				if src := p.Secrets[secret].Environment; src != access.SeedVar(svc) {
					t.Errorf("%s: its NATS secret %s comes from %q, not %s's seed %s", where, secret, src, svc, access.SeedVar(svc))
				}
				if len(s.Secrets) != 1 {
					t.Errorf("%s gets %d secrets, want its own seed alone", where, len(s.Secrets))
				}
				if svc == "billing" && (env("MODELPORT_CLICKHOUSE_USER") != chlocal.BillingUser || env("MODELPORT_CLICKHOUSE_PASSWORD") == "") {
					t.Errorf("%s logs in to ClickHouse as %q, want %s with a password", where, env("MODELPORT_CLICKHOUSE_USER"), chlocal.BillingUser)
				}
			case strings.HasPrefix(s.Image, "nats:"):
				for _, id := range access.Names() {
					if env(access.NKeyVar(id)) == "" {
						t.Errorf("%s: no %s", where, access.NKeyVar(id))
					}
				}
				conf := map[string]string{}
				for _, v := range s.Volumes {
					if v.Type == types.VolumeTypeBind && strings.HasPrefix(v.Target, "/etc/nats/") {
						b, err := os.ReadFile(v.Source)
						if err != nil {
							t.Fatal(err)
						}
						conf[strings.TrimPrefix(v.Target, "/etc/nats/")] = string(b)
					}
				}
				if conf["nats-auth.conf"] != authConf {
					t.Errorf("%s does not mount the generated nats-auth.conf", where)
				}
				parseNATSConf(t, where, conf)
			case strings.HasPrefix(s.Image, "clickhouse/"):
				if env("CLICKHOUSE_SKIP_USER_SETUP") != "" || env("CLICKHOUSE_PASSWORD") == "" || env("CLICKHOUSE_USER") == "" || env("CLICKHOUSE_USER") == "default" {
					t.Errorf("%s: the administrator is %q with a password %v (skip user setup %q): want no passwordless default user", where, env("CLICKHOUSE_USER"), env("CLICKHOUSE_PASSWORD") != "", env("CLICKHOUSE_SKIP_USER_SETUP"))
				}
				if !slices.ContainsFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool {
					return strings.HasPrefix(v.Target, "/docker-entrypoint-initdb.d/") && strings.HasSuffix(v.Source, "clickhouse-users.sh")
				}) {
					t.Errorf("%s does not make billing's and the analysts' users (clickhouse-users.sh)", where)
				}
			}
		}
	}
}

// checkSecurity checks how an overlay secures the platform: each service
// pod mounts its own NATS seed alone; the NATS servers admit the
// identities alone, with the table's permissions; ClickHouse has no
// passwordless user and billing logs in as its own; in production, NATS
// speaks TLS on client connections and routes, and the services check the
// servers' certificate.
func (c *cluster) checkSecurity(t *testing.T) {
	for _, w := range c.workloads() {
		spec := w.pod.Spec
		for _, ctr := range spec.Containers {
			svc, _ := serviceOf(ctr.Image)
			e := c.containerEnv(ctr)
			where := w.String() + " container " + ctr.Name
			switch {
			case svc != "":
				key, _ := mountedSecret(spec, ctr, e["MODELPORT_NATS_NKEY"])
				if !strings.HasPrefix(key.secret, "modelport-nats-seeds") || key.key != access.SeedVar(svc) {
					t.Errorf("%s: MODELPORT_NATS_NKEY %q is %+v, not its own seed %s of the Secret modelport-nats-seeds", where, e["MODELPORT_NATS_NKEY"], key, access.SeedVar(svc))
				}
				if key.items != 1 {
					t.Errorf("%s mounts %d keys of the seeds Secret, want its own alone", where, key.items)
				}
				tls := strings.HasPrefix(e["MODELPORT_NATS_URL"], "tls://")
				if c.overlay == "production" && !tls {
					t.Errorf("%s: production reaches NATS without TLS (%s)", where, e["MODELPORT_NATS_URL"])
				}
				if tls {
					if ca, _ := mountedSecret(spec, ctr, e["MODELPORT_NATS_TLS_CA"]); !strings.HasPrefix(ca.secret, "nats-tls") || ca.key != "ca.crt" {
						t.Errorf("%s: MODELPORT_NATS_TLS_CA %q is not the CA of the Secret nats-tls", where, e["MODELPORT_NATS_TLS_CA"])
					}
				}
				if svc == "billing" && (e["MODELPORT_CLICKHOUSE_USER"] != chlocal.BillingUser || e["MODELPORT_CLICKHOUSE_PASSWORD"] == "") {
					t.Errorf("%s logs in to ClickHouse as %q, want %s with a password", where, e["MODELPORT_CLICKHOUSE_USER"], chlocal.BillingUser)
				}
				if svc == "billing" && c.overlay == "production" {
					ca, _ := mountedSecret(spec, ctr, e["MODELPORT_CLICKHOUSE_TLS_CA"])
					if e["MODELPORT_CLICKHOUSE_TLS"] != "1" || !strings.HasPrefix(ca.secret, "clickhouse-tls") || ca.key != "ca.crt" {
						t.Errorf("%s: production reaches ClickHouse without TLS, or without the CA of the Secret clickhouse-tls (%q, %+v)", where, e["MODELPORT_CLICKHOUSE_TLS"], ca)
					}
				}
			case strings.HasPrefix(ctr.Image, "nats:"):
				for _, id := range access.Names() {
					if e[access.NKeyVar(id)] == "" {
						t.Errorf("%s: no %s", where, access.NKeyVar(id))
					}
				}
				conf := map[string]string{}
				for _, m := range ctr.VolumeMounts {
					for _, v := range spec.Volumes {
						if v.Name == m.Name && v.ConfigMap != nil && c.configMaps[v.ConfigMap.Name] != nil {
							for k, text := range c.configMaps[v.ConfigMap.Name].Data {
								conf[path.Join(strings.TrimPrefix(strings.TrimPrefix(m.MountPath, "/etc/nats"), "/"), k)] = text
							}
						}
					}
				}
				if conf["auth/nats-auth.conf"] != authConf {
					t.Errorf("%s does not mount the generated nats-auth.conf at /etc/nats/auth", where)
				}
				opts := parseNATSConf(t, where, conf)
				if c.overlay == "production" && (opts.TLSConfig == nil || opts.Cluster.TLSConfig == nil || opts.Cluster.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert) {
					t.Errorf("%s: production NATS without TLS on clients (%v) or verified routes (%v, verify %v)", where, opts.TLSConfig != nil, opts.Cluster.TLSConfig != nil, opts.Cluster.TLSConfig != nil && opts.Cluster.TLSConfig.ClientAuth == tls.RequireAndVerifyClientCert)
				}
			case strings.HasPrefix(ctr.Image, "clickhouse/"):
				if e["CLICKHOUSE_SKIP_USER_SETUP"] != "" || e["CLICKHOUSE_PASSWORD"] == "" || e["CLICKHOUSE_USER"] == "" || e["CLICKHOUSE_USER"] == "default" {
					t.Errorf("%s: the administrator is %q (skip user setup %q): want no passwordless default user", where, e["CLICKHOUSE_USER"], e["CLICKHOUSE_SKIP_USER_SETUP"])
				}
				script := ""
				for _, m := range ctr.VolumeMounts {
					for _, v := range spec.Volumes {
						if v.Name == m.Name && v.ConfigMap != nil && m.MountPath == "/docker-entrypoint-initdb.d" && c.configMaps[v.ConfigMap.Name] != nil {
							script = c.configMaps[v.ConfigMap.Name].Data["clickhouse-users.sh"]
						}
					}
				}
				if script == "" {
					t.Errorf("%s does not make billing's and the analysts' users (clickhouse-users.sh)", where)
				}
				checkUsersScript(t, script)
				if c.overlay == "production" {
					tlsConf := ""
					for _, v := range spec.Volumes {
						if v.ConfigMap != nil && c.configMaps[v.ConfigMap.Name] != nil {
							tlsConf += c.configMaps[v.ConfigMap.Name].Data["tls.xml"]
						}
					}
					if !strings.Contains(tlsConf, "<tcp_port_secure>") || !slices.ContainsFunc(ctr.VolumeMounts, func(m corev1.VolumeMount) bool {
						return m.MountPath == "/etc/clickhouse-server/config.d/tls.xml"
					}) {
						t.Errorf("%s: production ClickHouse serves no TLS port", where)
					}
				}
			}
		}
	}
}

// secretFile is where a file in a container comes from.
type secretFile struct {
	secret, key string
	items       int // keys the volume mounts
}

// mountedSecret finds which Secret key the file at file comes from.
func mountedSecret(spec corev1.PodSpec, ctr corev1.Container, file string) (secretFile, bool) {
	for _, m := range ctr.VolumeMounts {
		rel, ok := strings.CutPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			for _, it := range v.Secret.Items {
				if it.Path == rel {
					return secretFile{v.Secret.SecretName, it.Key, len(v.Secret.Items)}, true
				}
			}
			if len(v.Secret.Items) == 0 {
				return secretFile{v.Secret.SecretName, rel, 0}, true
			}
		}
	}
	return secretFile{}, false
}
