package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/nats-io/nats.go/jetstream"
)

// imagePath is where generated images are served.
const imagePath = "/v1/images/files/"

// ImageStore keeps generated images in a JetStream object store, so every
// router replica can serve every image; the store's TTL removes them.
type ImageStore struct {
	objects jetstream.ObjectStore
}

var _ gateway.ImageSaver = (*ImageStore)(nil)

// NewImageStore returns a store on the images bucket, which the router's
// bus created at start (state.ObjectStores).
func NewImageStore(ctx context.Context, js jetstream.JetStream, replicas int) (*ImageStore, error) {
	store, err := js.ObjectStore(ctx, state.BucketImages)
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", state.BucketImages, err)
	}
	return &ImageStore{objects: store}, nil
}

var imageName = regexp.MustCompile(`^[0-9a-f]{32}\.png$`)

// Save implements gateway.ImageSaver. The name is 128 random bits: whoever
// has the URL may download the image, as with a signed URL.
func (s *ImageStore) Save(ctx context.Context, png []byte, baseURL string) (string, error) {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	name := hex.EncodeToString(b) + ".png"
	if _, err := s.objects.Put(ctx, jetstream.ObjectMeta{Name: name}, bytes.NewReader(png)); err != nil {
		return "", errs.Wrap(errs.Unavailable, err, "store generated image")
	}
	return baseURL + imagePath + name, nil
}

func (s *ImageStore) serve(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !imageName.MatchString(name) {
		httpx.WriteError(w, errs.E(errs.NotFound, "no image %q", name))
		return
	}
	obj, err := s.objects.Get(r.Context(), name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		httpx.WriteError(w, errs.E(errs.NotFound, "image %s does not exist or has expired", name))
		return
	}
	if err != nil {
		httpx.WriteError(w, errs.Wrap(errs.Unavailable, err, "read image"))
		return
	}
	defer obj.Close()
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("Cache-Control", "private, max-age=3600")
	_, _ = io.Copy(w, obj)
}
