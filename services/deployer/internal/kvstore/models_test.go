package kvstore_test

import (
	"testing"

	"github.com/modelport/modelport/libs/access"

	"github.com/modelport/modelport/libs/natstest"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/deployer/internal/kvstore"
	"github.com/modelport/modelport/services/deployer/internal/models/modelstest"
)

// TestModelsKeepsTheContract runs the model store contract on a real
// JetStream bucket.
func TestModelsKeepsTheContract(t *testing.T) {
	bus := natstest.New(t).Bus(t, access.Deployer)
	modelstest.StoreContract(t, kvstore.NewModels(bus.KV(state.BucketModels)))
}
