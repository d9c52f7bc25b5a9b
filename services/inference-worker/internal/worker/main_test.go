package worker_test

import (
	"os"
	"testing"

	"github.com/modelport/modelport/services/inference-worker/internal/fakeengine"
)

func TestMain(m *testing.M) { os.Exit(fakeengine.Main(m)) }
