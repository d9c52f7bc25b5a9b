// Package modelstore reads model files on the model store, the folders
// the deployer and the workers mount at the same paths: GGUF headers with
// GPUStack's gguf-parser-go, and Hugging Face-style folders (config.json
// and safetensors headers). It implements models.Inspector.
package modelstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/deployer/internal/models"
)

// Inspector reads models under its folders, and nowhere else. It is safe
// for concurrent use; it reads at most maxReads models at once, so that
// many registrations together cannot take the deployer's memory (a
// safetensors header may hold tens of megabytes).
type Inspector struct {
	dirs  []string
	reads chan struct{}
}

// maxReads bounds the inspections that run at once.
const maxReads = 2

var _ models.Inspector = (*Inspector)(nil)

// New returns an Inspector for models under dirs, which must be absolute.
func New(dirs []string) (*Inspector, error) {
	in := &Inspector{reads: make(chan struct{}, maxReads)}
	for _, d := range dirs {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("model store folder %q is not an absolute path", d)
		}
		in.dirs = append(in.dirs, filepath.Clean(d))
	}
	return in, nil
}

// Dirs returns the model store's folders.
func (in *Inspector) Dirs() []string { return append([]string(nil), in.dirs...) }

// Inspect implements models.Inspector.
func (in *Inspector) Inspect(ctx context.Context, path string, contextLength func(trained int) int) (models.Inspection, error) {
	release, err := in.acquire(ctx)
	if err != nil {
		return models.Inspection{}, err
	}
	defer release()
	p, fi, err := in.resolve(path)
	if err != nil {
		return models.Inspection{}, err
	}
	if fi.IsDir() {
		return inspectFolder(ctx, p, contextLength)
	}
	return inspectGGUF(p, contextLength)
}

// InspectAdapter implements models.Inspector.
func (in *Inspector) InspectAdapter(ctx context.Context, path string) (models.Inspection, error) {
	release, err := in.acquire(ctx)
	if err != nil {
		return models.Inspection{}, err
	}
	defer release()
	p, fi, err := in.resolve(path)
	if err != nil {
		return models.Inspection{}, err
	}
	if fi.IsDir() {
		return inspectAdapterFolder(ctx, p)
	}
	return inspectGGUFAdapter(p)
}

// acquire waits for a turn to read, as long as ctx lasts.
func (in *Inspector) acquire(ctx context.Context) (func(), error) {
	select {
	case in.reads <- struct{}{}:
		return func() { <-in.reads }, nil
	case <-ctx.Done():
		return nil, errs.Wrap(errs.Unavailable, ctx.Err(), "the model store is busy reading other models; retry")
	}
}

// resolve checks that path lies in the model store, also once its
// symbolic links are followed, and returns the real path. Paths outside
// are refused before anything is read there, so the answer says nothing
// about what exists elsewhere.
func (in *Inspector) resolve(path string) (string, fs.FileInfo, error) {
	if len(in.dirs) == 0 {
		return "", nil, errs.E(errs.Invalid, "this deployer has no model store (MODELPORT_MODEL_DIRS is empty): register the model by another source")
	}
	clean := filepath.Clean(path)
	if !filepath.IsAbs(clean) || !in.within(clean, in.dirs) {
		return "", nil, errs.E(errs.Invalid, "%s is outside the model store (%s)", path, strings.Join(in.dirs, ", "))
	}
	real, err := filepath.EvalSymlinks(clean)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil, errs.E(errs.Invalid, "%s does not exist on the model store", path)
	}
	if err != nil {
		return "", nil, errs.E(errs.Invalid, "%s cannot be read: %v", path, unwrapPath(err))
	}
	var realDirs []string
	for _, d := range in.dirs {
		if r, err := filepath.EvalSymlinks(d); err == nil {
			realDirs = append(realDirs, r)
		}
	}
	if !in.within(real, realDirs) {
		return "", nil, errs.E(errs.Invalid, "%s links outside the model store", path)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", nil, errs.E(errs.Invalid, "%s cannot be read: %v", path, unwrapPath(err))
	}
	if !fi.IsDir() && !fi.Mode().IsRegular() {
		return "", nil, errs.E(errs.Invalid, "%s is neither a file nor a folder", path)
	}
	return real, fi, nil
}

func (in *Inspector) within(p string, dirs []string) bool {
	for _, d := range dirs {
		if rel, err := filepath.Rel(d, p); err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../") {
			return true
		}
	}
	return false
}

// unwrapPath drops the path an *fs.PathError repeats.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
