package modelstore

import (
	"context"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
)

// TestBusy: while maxReads inspections run, another waits, and gives up
// as unavailable when its request ends first.
func TestBusy(t *testing.T) {
	in, err := New([]string{t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for range maxReads {
		in.reads <- struct{}{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := in.Inspect(ctx, "/nowhere.gguf", func(int) int { return 0 }); errs.KindOf(err) != errs.Unavailable {
		t.Errorf("Inspect while busy = %v, want unavailable", err)
	}
	<-in.reads
	if _, err := in.Inspect(context.Background(), "/nowhere.gguf", func(int) int { return 0 }); errs.KindOf(err) != errs.Invalid {
		t.Errorf("Inspect with a free turn = %v, want the path refused", err)
	}
}
