// Package natstest starts a real NATS server with JetStream for a test: a
// free port, a store in t.TempDir(), shut down at cleanup. Like a
// production server it refuses anonymous clients: it knows every identity
// of the access table by an NKey seed of its own, with that identity's
// permissions, and a test admin allowed everything, which tests use to set
// the stage around the service they test. A service under test connects
// as its own identity (As), so a subject it uses without a grant fails its
// tests.
package natstest

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/natsembed"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/tlstest"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Admin is the name of the test identity allowed everything.
const Admin = "admin"

// Server is a running test server.
type Server struct {
	*server.Server
	seeds  string
	ca     *tlstest.CA
	client *tlstest.Pair // the client certificate, when the server asks for one
}

// Option configures a test server.
type Option func(*config)

type config struct {
	tls           bool
	verifyClients bool
}

// WithTLS makes clients connect with TLS, checking the server's
// certificate against a CA of the test's own (CAFile); with verifyClients
// they must present a certificate from it too (ClientCert).
func WithTLS(verifyClients bool) Option {
	return func(c *config) { c.tls, c.verifyClients = true, verifyClients }
}

// New starts a server for t, with every stream and bucket already created
// (as the services that own them would at start), so a test of one
// service need not start the others.
func New(t testing.TB, opts ...Option) *Server {
	t.Helper()
	var c config
	for _, o := range opts {
		o(&c)
	}
	s := &Server{seeds: t.TempDir()}
	pubs, err := access.EnsureSeeds(s.seeds, append(access.Names(), Admin))
	if err != nil {
		t.Fatal(err)
	}
	users := map[string]string{}
	for _, name := range access.Names() {
		users[pubs[name]] = name
	}
	eo := natsembed.Options{Port: -1, StoreDir: t.TempDir(), Users: users, Admins: []string{pubs[Admin]}}
	if c.tls {
		s.ca = tlstest.NewCA(t, "natstest CA")
		eo.TLS = s.ca.ServerTLS(t, c.verifyClients)
		if c.verifyClients {
			p := s.ca.Client(t, "natstest client")
			s.client = &p
		}
	}
	s.Server, err = natsembed.Start(eo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bus, err := natsx.Open(ctx, s.ClientURL(), Admin, 1, slog.New(slog.NewTextHandler(io.Discard, nil)), s.As(Admin)...)
	if err != nil {
		t.Fatalf("natstest: create the streams and buckets: %v", err)
	}
	bus.Close()
	return s
}

// Seed returns the path of the NKey seed file of identity name (or Admin):
// what MODELPORT_NATS_NKEY names for a service process.
func (s *Server) Seed(name string) string { return access.SeedFile(s.seeds, name) }

// CAFile returns the CA certificate the server's certificate is checked
// against (MODELPORT_NATS_TLS_CA), or "" without TLS.
func (s *Server) CAFile() string {
	if s.ca == nil {
		return ""
	}
	return s.ca.CertFile
}

// ClientCert returns the client certificate and key the server accepts
// (MODELPORT_NATS_TLS_CERT and _KEY), or nil when it asks for none.
func (s *Server) ClientCert() *tlstest.Pair { return s.client }

// As returns the natsx options that connect as identity name (or Admin):
// its seed and, with TLS, the server's CA and the client certificate.
func (s *Server) As(name string) []natsx.Option {
	opts := []natsx.Option{natsx.NKeyFile(s.Seed(name))}
	if s.ca != nil {
		cfg := &tls.Config{RootCAs: s.ca.Pool(), MinVersion: tls.VersionTLS12}
		if s.client != nil {
			cert, err := tls.LoadX509KeyPair(s.client.CertFile, s.client.KeyFile)
			if err != nil {
				panic(err) // written by New a moment ago
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		opts = append(opts, natsx.TLS(cfg))
	}
	return opts
}

// Connect returns a plain NATS connection as identity name (or Admin),
// closed at cleanup: for tests that act as another party.
func (s *Server) Connect(t testing.TB, name string) *nats.Conn {
	t.Helper()
	// Refusals are what tests look for: they read them from LastError
	// rather than have them printed.
	opts := []nats.Option{nats.Name(name), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})}
	if _, ok := access.For(name); ok {
		opts = append(opts, nats.CustomInboxPrefix(access.InboxPrefix(name)))
	}
	opt, err := nats.NkeyOptionFromSeed(s.Seed(name))
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, opt)
	if s.ca != nil {
		opts = append(opts, nats.RootCAs(s.ca.CertFile))
		if s.client != nil {
			opts = append(opts, nats.ClientCert(s.client.CertFile, s.client.KeyFile))
		}
	}
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("natstest: connect as %s: %v", name, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Bus opens a bus on the server as identity name (or Admin), closed at
// cleanup: the service under test connects as its identity, the test's own
// set-up as Admin.
func (s *Server) Bus(t testing.TB, name string) *natsx.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := natsx.Open(ctx, s.ClientURL(), name, 1, slog.New(slog.NewTextHandler(io.Discard, nil)), s.As(name)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}
