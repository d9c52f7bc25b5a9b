package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/tlstest"
	"github.com/nats-io/nats.go/jetstream"
)

// natsNode is one nats-server process of a test cluster.
type natsNode struct {
	name      string
	clientURL string   // nats://127.0.0.1:port
	monitor   string   // http://127.0.0.1:port, the monitoring endpoint
	conf      string   // its configuration file
	env       []string // its environment: the identities' public keys
	proc      *proc
}

// buildNATSServer builds the real nats-server binary, at the version this
// module requires, into dir and returns its path.
func buildNATSServer(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "nats-server")
	build := exec.Command("go", "build", "-o", path, "github.com/nats-io/nats-server/v2")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build nats-server: %v\n%s", err, out)
	}
	return path
}

// natsSecurity is how every test nats-server process runs, as in
// production: it admits the identities of the access table alone, each by
// its NKey seed (in a folder of the test's) with its permissions, from the
// configuration access.AuthorizationConf renders (public keys from the
// environment, as the compose and Kubernetes configurations take them);
// clients and cluster routes use TLS with a CA of the test's own, and
// certificates are checked both ways.
type natsSecurity struct {
	seeds  string
	pubs   map[string]string // identity -> public NKey
	ca     *tlstest.CA
	server tlstest.Pair
	client tlstest.Pair
}

func newNATSSecurity(t *testing.T) *natsSecurity {
	t.Helper()
	sec := &natsSecurity{seeds: t.TempDir()}
	var err error
	if sec.pubs, err = access.EnsureSeeds(sec.seeds, access.Names()); err != nil {
		t.Fatal(err)
	}
	sec.ca = tlstest.NewCA(t, "test NATS CA")
	sec.server = sec.ca.Server(t, "nats-server")
	sec.client = sec.ca.Client(t, "modelport")
	return sec
}

// conf is the configuration for authorization and TLS; with cluster, the
// routes' TLS too, to go inside the cluster block.
func (sec *natsSecurity) conf() string {
	return access.AuthorizationConf(access.EnvNKeys()) + "tls " + sec.tlsBlock()
}

func (sec *natsSecurity) tlsBlock() string {
	return fmt.Sprintf("{\n  cert_file: %q\n  key_file: %q\n  ca_file: %q\n  verify: true\n  timeout: 5\n}\n",
		sec.server.CertFile, sec.server.KeyFile, sec.ca.CertFile)
}

// serverEnv is the environment a nats-server process reads the public
// keys from.
func (sec *natsSecurity) serverEnv() []string {
	var env []string
	for name, pub := range sec.pubs {
		env = append(env, access.NKeyVar(name)+"="+pub)
	}
	return env
}

// clientEnv is what every service process needs to reach the servers; the
// seed is per service (cluster.start adds it).
func (sec *natsSecurity) clientEnv() []string {
	return []string{
		"MODELPORT_NATS_TLS_CA=" + sec.ca.CertFile,
		"MODELPORT_NATS_TLS_CERT=" + sec.client.CertFile,
		"MODELPORT_NATS_TLS_KEY=" + sec.client.KeyFile,
	}
}

// connect connects to the servers at url as identity name, with its seed
// and the client certificate, closed at cleanup: for tests that look at
// the records as that service does.
func (sec *natsSecurity) connect(t *testing.T, url, name string) jetstream.JetStream {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(sec.client.CertFile, sec.client.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{RootCAs: sec.ca.Pool(), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	nc, js, err := natsx.Connect(url, name, slog.New(slog.NewTextHandler(io.Discard, nil)),
		natsx.NKeyFile(access.SeedFile(sec.seeds, name)), natsx.TLS(cfg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return js
}

// startNATSCluster starts n nats-server processes on loopback that form one
// JetStream cluster through their routes, each storing in a directory of its
// own, and waits until the cluster has elected its meta leader. They run
// with sec's identities and TLS, routes included.
func startNATSCluster(t *testing.T, server string, n int, sec *natsSecurity) []*natsNode {
	t.Helper()
	port := func() int {
		p, err := chlocal.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	dir := t.TempDir()
	clusterPorts := make([]int, n)
	var routes []string
	for i := range clusterPorts {
		clusterPorts[i] = port()
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", clusterPorts[i]))
	}
	nodes := make([]*natsNode, n)
	for i := range nodes {
		name := fmt.Sprintf("nats-%d", i+1)
		client, monitor := port(), port()
		conf := filepath.Join(dir, name+".conf")
		text := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
http: 127.0.0.1:%d
jetstream { store_dir: %q }
cluster {
  name: modelport
  listen: 127.0.0.1:%d
  routes: [%s]
  tls %s}
%s`, name, client, monitor, filepath.Join(dir, name), clusterPorts[i], strings.Join(routes, ", "), sec.tlsBlock(), sec.conf())
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		nodes[i] = &natsNode{
			name:      name,
			clientURL: fmt.Sprintf("tls://127.0.0.1:%d", client),
			env:       sec.serverEnv(),
			monitor:   fmt.Sprintf("http://127.0.0.1:%d", monitor),
			conf:      conf,
		}
	}
	for _, nd := range nodes {
		nd.start(t, server)
	}
	eventually(t, 30*time.Second, "NATS cluster formed", func() error {
		for _, nd := range nodes {
			var jsz jszReport
			if err := getJSON(nd.monitor+"/jsz", &jsz); err != nil {
				return fmt.Errorf("%s: %v", nd.name, err)
			}
			if jsz.Meta.Leader == "" || jsz.Meta.Size != n {
				return fmt.Errorf("%s: meta leader %q, cluster size %d", nd.name, jsz.Meta.Leader, jsz.Meta.Size)
			}
		}
		return nil
	})
	return nodes
}

// start runs the node's server process and waits until it serves
// /healthz.
func (nd *natsNode) start(t *testing.T, server string) {
	t.Helper()
	nd.proc = startProc(t, nd.name, server, nd.env, "-c", nd.conf)
	eventually(t, 30*time.Second, nd.name+" healthy", func() error {
		select {
		case <-nd.proc.done:
			return fmt.Errorf("exited: %v", nd.proc.err)
		default:
		}
		var health struct{ Status string }
		return getJSON(nd.monitor+"/healthz?js-enabled-only=true", &health)
	})
}

// natsURLs is the comma-separated list of the nodes' client URLs, which is
// how a service is given every server of a cluster.
func natsURLs(nodes []*natsNode) string {
	urls := make([]string, len(nodes))
	for i, nd := range nodes {
		urls[i] = nd.clientURL
	}
	return strings.Join(urls, ",")
}

// jszReport is the part of a server's /jsz monitoring report the tests read.
type jszReport struct {
	Meta struct {
		Leader string `json:"leader"`
		Size   int    `json:"cluster_size"`
	} `json:"meta_cluster"`
	Accounts []struct {
		Name    string         `json:"name"`
		Streams []streamReport `json:"stream_detail"`
	} `json:"account_details"`
}

// streamReport is one stream in /jsz?streams=true&config=true.
type streamReport struct {
	Name   string `json:"name"`
	Config struct {
		Replicas int `json:"num_replicas"`
	} `json:"config"`
	Cluster struct {
		Leader   string `json:"leader"`
		Replicas []struct {
			Name    string `json:"name"`
			Current bool   `json:"current"`
			Offline bool   `json:"offline"`
		} `json:"replicas"`
	} `json:"cluster"`
	State struct {
		Messages uint64 `json:"messages"`
	} `json:"state"`
}

// streams returns every stream of the global account as the node reports
// them, by name.
func (nd *natsNode) streams() (map[string]streamReport, error) {
	var jsz jszReport
	if err := getJSON(nd.monitor+"/jsz?accounts=true&streams=true&config=true", &jsz); err != nil {
		return nil, err
	}
	out := map[string]streamReport{}
	for _, a := range jsz.Accounts {
		for _, s := range a.Streams {
			out[s.Name] = s
		}
	}
	return out, nil
}

// getJSON decodes the JSON answer of a GET.
func getJSON(url string, out any) error {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
