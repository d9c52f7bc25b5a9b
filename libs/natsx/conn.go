package natsx

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Option says how a service authenticates to NATS and secures the
// connection.
type Option func(*dialOptions)

type dialOptions struct {
	nkeyFile  string
	credsFile string
	tls       *tls.Config
}

// NKeyFile authenticates with the NKey seed in the file at path
// (MODELPORT_NATS_NKEY), as `nats --nkey` does.
func NKeyFile(path string) Option { return func(o *dialOptions) { o.nkeyFile = path } }

// CredsFile authenticates with the user JWT and seed of a NATS creds file
// (MODELPORT_NATS_CREDS), as `nats --creds` does.
func CredsFile(path string) Option { return func(o *dialOptions) { o.credsFile = path } }

// TLS connects with TLS, checking the server's certificate against
// cfg.RootCAs (the system roots when nil) and presenting cfg's client
// certificate if it has one.
func TLS(cfg *tls.Config) Option { return func(o *dialOptions) { o.tls = cfg } }

// TLSConfig builds a client TLS configuration from PEM files: the CA that
// signs the server's certificate (empty: the system roots) and, for
// servers that verify clients, the client's certificate and key.
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("TLS CA: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS CA %s: no PEM certificate in it", caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("a TLS client certificate needs both its certificate and its key file")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// what names the credentials in messages.
func (o dialOptions) what() string {
	switch {
	case o.nkeyFile != "":
		return "the NKey seed " + o.nkeyFile
	case o.credsFile != "":
		return "the creds file " + o.credsFile
	}
	return "no credentials (set MODELPORT_NATS_NKEY or MODELPORT_NATS_CREDS)"
}

// Connect dials NATS as identity name with reconnects that never give up,
// so a service rides out a NATS restart, and returns the connection and
// its JetStream context. Credentials or a certificate the server refuses
// are an error at once, naming the identity, the file and what the server
// said; a server not up yet is waited for in the background.
//
// A permission the server refuses later is logged with its subject and
// counted in modelport.nats.permission_denied; Publish gives up on it at
// once rather than retry.
func Connect(url, name string, log *slog.Logger, opts ...Option) (*nats.Conn, jetstream.JetStream, error) {
	var o dialOptions
	for _, opt := range opts {
		opt(&o)
	}
	rec := &recorder{name: name, log: log}
	nopts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		// No buffering while disconnected: a publish then fails at once
		// and its caller knows it, instead of a message the caller gave up
		// on reaching the server later (a usage event for a request whose
		// client was told it failed would be billed).
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrl()) }),
		nats.ErrorHandler(rec.handle),
		// A credential revoked while running is reported at every attempt
		// rather than ending the connection for good.
		nats.IgnoreAuthErrorAbort(),
	}
	if _, ok := access.For(name); ok {
		nopts = append(nopts, nats.CustomInboxPrefix(access.InboxPrefix(name)))
	}
	switch {
	case o.nkeyFile != "":
		if _, err := access.ReadSeed(o.nkeyFile); err != nil {
			return nil, nil, fmt.Errorf("%s: NATS credentials: %w", name, err)
		}
		if access.SeedExposed(o.nkeyFile) {
			log.Warn("the NATS seed is readable by every user of this machine or container; make it readable by its owner (and group) alone", "file", o.nkeyFile)
		}
		opt, err := nats.NkeyOptionFromSeed(o.nkeyFile)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: NATS credentials %s: %w", name, o.nkeyFile, err)
		}
		nopts = append(nopts, opt)
	case o.credsFile != "":
		if _, err := os.ReadFile(o.credsFile); err != nil {
			return nil, nil, fmt.Errorf("%s: NATS credentials: %w", name, err)
		}
		nopts = append(nopts, nats.UserCredentials(o.credsFile))
	}
	if o.tls != nil {
		nopts = append(nopts, nats.Secure(o.tls))
	}
	// One attempt first, so refused credentials are an error now; then,
	// if no server answered, keep trying in the background.
	nc, err := nats.Connect(url, nopts...)
	if errors.Is(err, nats.ErrNoServers) {
		nc, err = nats.Connect(url, append(nopts, nats.RetryOnFailedConnect(true))...)
	}
	if err != nil {
		return nil, nil, describeConnectError(name, url, o, err)
	}
	rec.register(nc)
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// describeConnectError says which identity, which file and what the
// server said.
func describeConnectError(name, url string, o dialOptions, err error) error {
	msg := strings.TrimPrefix(err.Error(), "nats: ")
	switch {
	case isAuthError(err):
		return fmt.Errorf("%s: NATS at %s refused %s: the server said %q", name, url, o.what(), msg)
	case isTLSError(err):
		return fmt.Errorf("%s: TLS with NATS at %s failed (MODELPORT_NATS_TLS_CA names the CA that signs the server's certificate): %w", name, url, err)
	}
	return fmt.Errorf("%s: connect to nats %s: %w", name, url, err)
}

func isAuthError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired) ||
		errors.Is(err, nats.ErrNkeysNotSupported) || strings.Contains(strings.ToLower(err.Error()), "authorization")
}

func isTLSError(err error) bool {
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	return errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid) || errors.As(err, &verify) ||
		errors.Is(err, nats.ErrSecureConnRequired) || errors.Is(err, nats.ErrSecureConnWanted) ||
		strings.Contains(err.Error(), "tls:")
}
