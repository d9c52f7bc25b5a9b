package access_test

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/libs/telemetry"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestAttackAnonymousRefused: a client without credentials, or with a
// key the server does not know, gets nothing, and a service given such
// credentials says at start which identity, which file and what the
// server said.
func TestAttackAnonymousRefused(t *testing.T) {
	ns := natstest.New(t)
	if nc, err := nats.Connect(ns.ClientURL()); err == nil {
		nc.Close()
		t.Fatal("an anonymous client was let in")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
		t.Errorf("anonymous client: %v, want an authorization violation", err)
	}
	_, _, err := natsx.Connect(ns.ClientURL(), access.Router, quiet)
	if err == nil || !strings.Contains(err.Error(), "router: NATS at "+ns.ClientURL()+" refused no credentials (set MODELPORT_NATS_NKEY or MODELPORT_NATS_CREDS)") ||
		!strings.Contains(err.Error(), `the server said "Authorization Violation"`) {
		t.Errorf("a service without credentials: %v", err)
	}

	// A well-formed seed the server does not know.
	stranger := filepath.Join(t.TempDir(), "router.nk")
	if _, err := access.EnsureSeeds(filepath.Dir(stranger), []string{access.Router}); err != nil {
		t.Fatal(err)
	}
	_, _, err = natsx.Connect(ns.ClientURL(), access.Router, quiet, natsx.NKeyFile(stranger))
	if err == nil || !strings.Contains(err.Error(), "refused the NKey seed "+stranger) || !strings.Contains(err.Error(), `the server said "Authorization Violation"`) {
		t.Errorf("an unknown seed: %v", err)
	}

	// The all-in-one keeps its seeds readable by their owner alone, and
	// refuses one that others may read.
	if err := os.Chmod(stranger, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := access.EnsureSeeds(filepath.Dir(stranger), []string{access.Router}); err == nil || !strings.Contains(err.Error(), "lets others read it") {
		t.Errorf("a seed readable by others: %v", err)
	}
	// Not a seed at all.
	junk := filepath.Join(t.TempDir(), "junk.nk")
	if err := os.WriteFile(junk, []byte("not a seed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := natsx.Connect(ns.ClientURL(), access.Router, quiet, natsx.NKeyFile(junk)); err == nil || !strings.Contains(err.Error(), junk) {
		t.Errorf("a file that is no seed: %v", err)
	}

	// Another identity's seed: the service says the credentials are not
	// its own.
	_, err = natsx.Open(context.Background(), ns.ClientURL(), access.Router, 1, quiet, natsx.NKeyFile(ns.Seed(access.InferenceWorker)))
	if errs.KindOf(err) != errs.Forbidden || !strings.Contains(err.Error(), "are the credentials router's?") {
		t.Errorf("the router started with the worker's seed: %v", err)
	}
}

// TestAttackTLS: with TLS on, a client that does not trust the server's
// CA, or presents no certificate, does not get in.
func TestAttackTLS(t *testing.T) {
	ns := natstest.New(t, natstest.WithTLS(true))
	seed := natsx.NKeyFile(ns.Seed(access.Router))
	// No TLS at all.
	if _, _, err := natsx.Connect(ns.ClientURL(), access.Router, quiet, seed); err == nil {
		t.Error("a plain connection was let in")
	}
	// TLS, but the system's roots: the server's certificate is not
	// trusted.
	if _, _, err := natsx.Connect(ns.ClientURL(), access.Router, quiet, seed, natsx.TLS(&tls.Config{MinVersion: tls.VersionTLS12})); err == nil ||
		!strings.Contains(err.Error(), "TLS with NATS") {
		t.Errorf("a client that does not trust the server: %v", err)
	}
	// The right CA, no client certificate.
	cfg, err := natsx.TLSConfig(ns.CAFile(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	if nc, _, err := natsx.Connect(ns.ClientURL(), access.Router, quiet, seed, natsx.TLS(cfg)); err == nil {
		nc.Close()
		t.Error("a client without a certificate was let in")
	}
	// Everything right.
	cfg, err = natsx.TLSConfig(ns.CAFile(), ns.ClientCert().CertFile, ns.ClientCert().KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	nc, _, err := natsx.Connect(ns.ClientURL(), access.Router, quiet, seed, natsx.TLS(cfg))
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
}

// TestAttackWorkerCannotMintKeys: the worker runs third-party engine code,
// so it is where an attacker lands. Its identity cannot put a key into
// apikeys (an admin key would own the platform).
func TestAttackWorkerCannotMintKeys(t *testing.T) {
	metrics := telemetry.MetricsHandler()
	ns := natstest.New(t)
	worker := ns.Bus(t, access.InferenceWorker)
	secret := auth.NewSecret()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// It may look keys up (its /metrics takes admin keys), not write them.
	if err := auth.NewKeyring(worker.KV(state.BucketAPIKeys)).Put(ctx, auth.NewKey(secret, auth.NewOwnerID(), true)); err == nil {
		t.Fatal("the worker stored an admin key")
	}
	admin := auth.NewKeyring(ns.Bus(t, natstest.Admin).KV(state.BucketAPIKeys))
	if _, err := admin.Verify(context.Background(), secret); errs.KindOf(err) != errs.Unauthorized {
		t.Errorf("the key the worker tried to store verifies: %v", err)
	}
	if n := denied(t, metrics, access.InferenceWorker, "$KV.apikeys"); n < 1 {
		t.Errorf("modelport_nats_permission_denied for the worker's put: %v, want at least 1", n)
	}
}

// TestAttackWorkerCannotPublish: the worker's identity cannot publish
// usage (billing would charge a tenant for it) or announce deployments.
// The refusal ends the publish at once, without the retries a lost
// connection gets, and is counted.
func TestAttackWorkerCannotPublish(t *testing.T) {
	metrics := telemetry.MetricsHandler()
	ns := natstest.New(t)
	worker := ns.Bus(t, access.InferenceWorker)
	for _, ev := range []events.Event{
		events.RequestCompletedV1{Meta: events.NewMeta(), RequestID: "r1", ServiceID: "s1", OwnerID: "victim", PromptTokens: 1_000_000, TotalTokens: 1_000_000},
		events.ServiceCreatedV1{Meta: events.NewMeta(), ServiceID: "s1", OwnerID: "victim", Name: "evil", Instances: 64},
	} {
		err := worker.Publisher.Publish(context.Background(), ev)
		if errs.KindOf(err) != errs.Forbidden || !strings.Contains(err.Error(), "NATS identity inference-worker may not publish "+ev.Subject()) {
			t.Errorf("publish %s as the worker: %v, want a refusal", ev.Subject(), err)
		}
		if n := denied(t, metrics, access.InferenceWorker, ev.Subject()); n != 1 {
			t.Errorf("%s: refused %v times, want once: a refusal is not retried", ev.Subject(), n)
		}
	}
	admin := ns.Bus(t, natstest.Admin)
	for _, stream := range []string{events.StreamUsage, events.StreamDeploy} {
		st, err := admin.JS.Stream(context.Background(), stream)
		if err != nil {
			t.Fatal(err)
		}
		if info, err := st.Info(context.Background()); err != nil || info.State.Msgs != 0 {
			t.Errorf("stream %s holds %v messages (%v), want none", stream, info.State.Msgs, err)
		}
	}
	// Nor read usage, nor take billing's consumer.
	ctx, done := natsx.Guard(context.Background(), worker.Conn)
	defer done()
	start := time.Now()
	_, err := worker.JS.CreateOrUpdateConsumer(ctx, events.StreamUsage, jetstream.ConsumerConfig{Durable: "billing-usage", FilterSubject: events.SubjectRequestCompletedV1})
	if err = natsx.Explain(worker.Conn, start, err); errs.KindOf(err) != errs.Forbidden {
		t.Errorf("the worker creating billing's consumer: %v", err)
	}
}

// denied reads modelport_nats_permission_denied for an identity and a
// subject from the process's metrics.
func denied(t *testing.T, metrics http.Handler, identity, subject string) float64 {
	t.Helper()
	// The refusal reaches the client asynchronously; the callback that
	// counts it runs soon after.
	var n float64
	re := regexp.MustCompile(`(?m)^modelport_nats_permission_denied_total\{([^}]*)\} (\S+)$`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		rec := httptest.NewRecorder()
		metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		n = 0
		for _, m := range re.FindAllStringSubmatch(rec.Body.String(), -1) {
			if strings.Contains(m[1], `identity="`+identity+`"`) && strings.Contains(m[1], `subject="`+subject+`"`) {
				v, _ := strconv.ParseFloat(m[2], 64)
				n += v
			}
		}
		if n > 0 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}
