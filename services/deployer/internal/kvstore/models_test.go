package kvstore_test

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/kvstore"
	"github.com/modelport/modelport/services/deployer/internal/models/modelstest"
)

// TestModelsKeepsTheContract runs the model store contract on a real
// JetStream bucket.
func TestModelsKeepsTheContract(t *testing.T) {
	bus, err := natsx.Open(context.Background(), natstest.New(t).ClientURL(), "test", 1, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bus.Close)
	modelstest.StoreContract(t, kvstore.NewModels(bus.KV(state.BucketModels)))
}
