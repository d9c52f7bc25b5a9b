package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/modelport/modelport/libs/errs"
)

// ImageFetcher downloads the image an http(s) URL in a chat request names,
// so that the engine is sent the image itself and never fetches anything
// a client chose. Implemented by transport.ImageFetcher, which refuses
// private, loopback and link-local targets.
type ImageFetcher interface {
	// Fetch returns the image's media type ("image/png") and at most limit
	// bytes of it. Errors of kind errs.Invalid have messages for the
	// client; the gateway adds the parameter.
	Fetch(ctx context.Context, url string, limit int64) (mediaType string, data []byte, err error)
}

// DefaultMaxImageBytes bounds an image, as OpenAI does.
const DefaultMaxImageBytes = 20 << 20

// maxRemoteImages bounds the image URLs one request may ask the gateway
// to fetch, and so the memory a request can make it hold.
const maxRemoteImages = 8

// imageRef is where an image part sits: message i, part j.
type imageRef struct{ i, j int }

func (r imageRef) param() string {
	return fmt.Sprintf("messages[%d].content[%d].image_url.url", r.i, r.j)
}

// inlineImages returns body with each http(s) image URL replaced by a data
// URL of the image, fetched by g.Images within g.ImageFetchTimeout for
// all of them. A body without such URLs comes back unchanged.
func (g *Gateway) inlineImages(ctx context.Context, body []byte, p *chatParams) ([]byte, error) {
	var remote []imageRef
	for i, parts := range p.parts {
		for j, part := range parts {
			if part.Type == "image_url" && isRemote(part.ImageURL.URL) {
				remote = append(remote, imageRef{i, j})
			}
		}
	}
	if len(remote) == 0 {
		return body, nil
	}
	if g.Images == nil {
		return nil, errs.InvalidParam(remote[0].param(), "this router does not fetch image URLs; send the image inline as a data:image/...;base64 URL")
	}
	if len(remote) > maxRemoteImages {
		return nil, errs.InvalidParam(remote[maxRemoteImages].param(), "at most %d image URLs per request are fetched; send the others inline as data URLs", maxRemoteImages)
	}
	fetchCtx := ctx
	if g.ImageFetchTimeout > 0 {
		var cancel context.CancelFunc
		fetchCtx, cancel = context.WithTimeout(ctx, g.ImageFetchTimeout)
		defer cancel()
	}
	budget := g.MaxFetchedBytes
	if budget <= 0 {
		budget = g.MaxImageBytes
	}
	urls := map[imageRef]string{}
	for _, r := range remote {
		if budget <= 0 {
			return nil, errs.InvalidParam(r.param(), "the images fetched for one request may total at most %d bytes; send this one inline", g.MaxFetchedBytes)
		}
		mediaType, data, err := g.fetchImage(fetchCtx, p.parts[r.i][r.j].ImageURL.URL, min(g.MaxImageBytes, budget))
		if ctx.Err() != nil {
			return nil, ctx.Err() // the client went away
		}
		if err != nil {
			if e, ok := errs.As(err); ok && e.Kind == errs.Invalid {
				// The client reads the message; the cause (which address,
				// why) is for the operator.
				g.log.InfoContext(ctx, "image URL refused", "param", r.param(), "err", err)
				return nil, errs.InvalidParam(r.param(), "%s", e.Msg)
			}
			return nil, err
		}
		budget -= int64(len(data))
		urls[r] = "data:" + mediaType + ";base64," + base64.StdEncoding.EncodeToString(data)
	}
	return replaceImageURLs(body, urls)
}

// maxConcurrentFetches bounds the image fetches in flight at once across
// all requests, so many small requests cannot make the router hold many
// large images together.
const maxConcurrentFetches = 16

// fetchImage fetches one image once a fetch slot is free.
func (g *Gateway) fetchImage(ctx context.Context, url string, limit int64) (string, []byte, error) {
	if g.fetchSlots != nil {
		select {
		case g.fetchSlots <- struct{}{}:
			defer func() { <-g.fetchSlots }()
		case <-ctx.Done():
			return "", nil, errs.E(errs.Invalid, "fetching the image took too long: the router is busy fetching other images")
		}
	}
	return g.Images.Fetch(ctx, url, limit)
}

// replaceImageURLs returns body with image_url.url of the parts in urls
// set to their new URLs; everything else stays as the client sent it.
// The structure was checked when the request was parsed, so a mismatch
// here is refused rather than forwarded with the original URL.
func replaceImageURLs(body []byte, urls map[imageRef]string) ([]byte, error) {
	mismatch := func(r imageRef) error {
		return errs.InvalidParam(r.param(), "the image part could not be read")
	}
	var top map[string]json.RawMessage
	var msgs []map[string]json.RawMessage
	if json.Unmarshal(body, &top) != nil || json.Unmarshal(top["messages"], &msgs) != nil {
		for r := range urls {
			return nil, mismatch(r)
		}
	}
	byMessage := map[int][]imageRef{}
	for r := range urls {
		byMessage[r.i] = append(byMessage[r.i], r)
	}
	for i, refs := range byMessage {
		var parts []map[string]json.RawMessage
		if i >= len(msgs) || json.Unmarshal(msgs[i]["content"], &parts) != nil {
			return nil, mismatch(refs[0])
		}
		for _, r := range refs {
			var image map[string]json.RawMessage
			if r.j >= len(parts) || json.Unmarshal(parts[r.j]["image_url"], &image) != nil || image == nil {
				return nil, mismatch(r)
			}
			var err error
			if image["url"], err = marshal(urls[r]); err != nil {
				return nil, err
			}
			if parts[r.j]["image_url"], err = marshal(image); err != nil {
				return nil, err
			}
		}
		var err error
		if msgs[i]["content"], err = marshal(parts); err != nil {
			return nil, err
		}
	}
	var err error
	if top["messages"], err = marshal(msgs); err != nil {
		return nil, err
	}
	return marshal(top)
}
