// Package natsembed runs a NATS server with JetStream inside the current
// process: the all-in-one binary's bus and the tests' real server.
package natsembed

import (
	"crypto/tls"
	"fmt"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/nats-io/nats-server/v2/server"
)

// Options configures an embedded server.
type Options struct {
	Host     string // default 127.0.0.1
	Port     int    // -1 picks a free port
	StoreDir string // JetStream file store
	// Users maps each NKey public key to the identity (access.Identities)
	// it authenticates, with that identity's permissions. When set, the
	// server refuses every other client, anonymous ones included.
	Users map[string]string
	// Admins are NKey public keys allowed everything: tests use one to set
	// the stage around a service. Production servers have none.
	Admins []string
	// TLS, when set, is the server's TLS configuration for clients: they
	// must connect with TLS. Set ClientCAs and ClientAuth in it to require
	// client certificates.
	TLS *tls.Config
}

// Start runs a server and waits until it accepts connections. Call
// Shutdown and WaitForShutdown to stop it.
func Start(o Options) (*server.Server, error) {
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	opts := &server.Options{
		Host:      o.Host,
		Port:      o.Port,
		JetStream: true,
		StoreDir:  o.StoreDir,
		NoSigs:    true,
		// Each request is a usage event; keep the payload limit generous
		// for future image events.
		MaxPayload: 8 << 20,
	}
	users, err := NKeyUsers(o.Users)
	if err != nil {
		return nil, err
	}
	for _, pub := range o.Admins {
		users = append(users, &server.NkeyUser{Nkey: pub})
	}
	opts.Nkeys = users
	if o.TLS != nil {
		opts.TLSConfig = o.TLS
		opts.TLS = true
		opts.TLSVerify = o.TLS.ClientAuth == tls.RequireAndVerifyClientCert
		opts.TLSTimeout = 5
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("nats server on %s:%d not ready after 10s", o.Host, o.Port)
	}
	return s, nil
}

// NKeyUsers returns the server's users for NKey public keys mapped to
// identity names, each with its permissions from the access table.
func NKeyUsers(users map[string]string) ([]*server.NkeyUser, error) {
	var out []*server.NkeyUser
	for pub, name := range users {
		id, ok := access.For(name)
		if !ok {
			return nil, fmt.Errorf("nats user %s: no identity %q in the access table", pub, name)
		}
		out = append(out, &server.NkeyUser{Nkey: pub, Permissions: Permissions(id.NATSPermissions())})
	}
	return out, nil
}

// Permissions converts access permissions to the server's.
func Permissions(p access.Permissions) *server.Permissions {
	rule := func(r access.Rule) *server.SubjectPermission {
		return &server.SubjectPermission{Allow: r.Allow, Deny: r.Deny}
	}
	return &server.Permissions{Publish: rule(p.Publish), Subscribe: rule(p.Subscribe)}
}
