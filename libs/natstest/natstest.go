// Package natstest starts a real NATS server with JetStream for a test: a
// free port, a store in t.TempDir(), shut down at cleanup.
package natstest

import (
	"testing"

	"github.com/modelport/modelport/libs/natsembed"
	"github.com/nats-io/nats-server/v2/server"
)

// New starts a server for t and returns it; s.ClientURL() is its address.
func New(t testing.TB) *server.Server {
	t.Helper()
	s, err := natsembed.Start(natsembed.Options{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}
