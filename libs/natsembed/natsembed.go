// Package natsembed runs a NATS server with JetStream inside the current
// process: the all-in-one binary's bus and the tests' real server.
package natsembed

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configures an embedded server.
type Options struct {
	Host     string // default 127.0.0.1
	Port     int    // -1 picks a free port
	StoreDir string // JetStream file store
}

// Start runs a server and waits until it accepts connections. Call
// Shutdown and WaitForShutdown to stop it.
func Start(o Options) (*server.Server, error) {
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	s, err := server.NewServer(&server.Options{
		Host:      o.Host,
		Port:      o.Port,
		JetStream: true,
		StoreDir:  o.StoreDir,
		NoSigs:    true,
		// Each request is a usage event; keep the payload limit generous
		// for future image events.
		MaxPayload: 8 << 20,
	})
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
