package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/jsonscan"
)

// ImageFetcher downloads the image an http(s) URL in a chat request names,
// so that the engine is sent the image itself and never fetches anything
// a client chose. Implemented by transport.ImageFetcher, which refuses
// private, loopback and link-local targets.
type ImageFetcher interface {
	// Fetch returns the image's media type ("image/png") and at most limit
	// bytes of it. reserve, when not nil, is called with a number of bytes
	// before a buffer of that many more is allocated for the image; its
	// error ends the fetch. Errors of kind errs.Invalid have messages for
	// the client; the gateway adds the parameter.
	Fetch(ctx context.Context, url string, limit int64, reserve func(n int64) error) (mediaType string, data []byte, err error)
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

// fetched is an image fetched for an image part: its media type and
// bytes, and where the part's URL sits in the body.
type fetched struct {
	ref       imageRef
	url       jsonscan.Span
	mediaType string
	data      []byte
}

// fetchImages fetches the http(s) image URLs of p's parts (body is the
// request), within g.ImageFetchTimeout for all of them, one at a time,
// each in one of owner's fetch slots. Their bytes are held in hold: a
// fetch the budget has no room for is refused (errs.Unavailable).
func (g *Gateway) fetchImages(ctx context.Context, body []byte, p *chatParams, owner string, hold *Hold) ([]fetched, error) {
	var remote []fetched
	for i, parts := range p.parts {
		for j, part := range parts {
			if part.Type != "image_url" {
				continue
			}
			if u, err := part.imageURL(body); err == nil && isRemote(u) {
				remote = append(remote, fetched{ref: imageRef{i, j}, url: part.url})
			}
		}
	}
	if len(remote) == 0 {
		return nil, nil
	}
	if g.Images == nil {
		return nil, errs.InvalidParam(remote[0].ref.param(), "this router does not fetch image URLs; send the image inline as a data:image/...;base64 URL")
	}
	if len(remote) > maxRemoteImages {
		return nil, errs.InvalidParam(remote[maxRemoteImages].ref.param(), "at most %d image URLs per request are fetched; send the others inline as data URLs", maxRemoteImages)
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
	for k := range remote {
		r := &remote[k]
		if budget <= 0 {
			return nil, errs.InvalidParam(r.ref.param(), "the images fetched for one request may total at most %d bytes; send this one inline", g.MaxFetchedBytes)
		}
		limit := min(g.MaxImageBytes, budget)
		u, _ := p.parts[r.ref.i][r.ref.j].imageURL(body)
		// The image's bytes are held as they are allocated.
		mediaType, data, err := g.fetchImage(fetchCtx, string(u), limit, owner, hold.Grow)
		if ctx.Err() != nil {
			return nil, ctx.Err() // the client went away
		}
		if err != nil {
			if e, ok := errs.As(err); ok && e.Kind == errs.Invalid {
				// The client reads the message; the cause (which address,
				// why) is for the operator.
				g.log.InfoContext(ctx, "image URL refused", "param", r.ref.param(), "err", err)
				return nil, errs.InvalidParam(r.ref.param(), "%s", e.Msg)
			}
			return nil, err
		}
		budget -= int64(len(data))
		r.mediaType, r.data = mediaType, data
	}
	return remote, nil
}

// maxConcurrentFetches bounds the image fetches in flight at once across
// all requests, so many small requests cannot make the router hold many
// large images together; fetchesPerOwner bounds those of one owner, so
// one owner's slow image servers cannot hold every slot.
const (
	maxConcurrentFetches = 16
	fetchesPerOwner      = 4
)

// fetchImage fetches one image once one of owner's fetch slots is free.
// The wait for a slot takes at most half of what is left of ctx's time,
// so a fetch that gets one has time to run; no slot free by then is
// errs.Unavailable: the client should retry, not change its request.
func (g *Gateway) fetchImage(ctx context.Context, url string, limit int64, owner string, reserve func(int64) error) (string, []byte, error) {
	if g.fetchSlots != nil {
		waitCtx := ctx
		if deadline, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			waitCtx, cancel = context.WithTimeout(ctx, time.Until(deadline)/2)
			defer cancel()
		}
		release, err := g.fetchSlots.acquire(waitCtx, owner)
		if err != nil {
			if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return "", nil, ctx.Err()
			}
			return "", nil, &errs.Error{Kind: errs.Unavailable, RetryAfter: time.Second,
				Msg: "no image fetch slot was free in time: the router is busy fetching other images for this account or others; retry shortly"}
		}
		defer release()
	}
	return g.Images.Fetch(ctx, url, limit, reserve)
}

// streamOptionsUpstream are the stream options the router asks engines
// for: usage in the last chunk and, where the engine supports it, running
// usage in every chunk, so a stream cut short is still metered.
const streamOptionsUpstream = `{"include_usage":true,"continuous_usage_stats":true}`

// edit replaces body[at.Start:at.End] with text, or with a data URL of
// image when it is set.
type edit struct {
	at    jsonscan.Span
	text  []byte
	image *fetched
}

// upstreamBody returns the request for the engine, spliced together in one
// buffer from the client's bytes: each fetched image's URL replaced by a
// data URL of the image and, for a stream, stream_options set as the
// router needs them (streamOptionsUpstream). Everything else stays as the
// client sent it. A request that needs neither change is body itself. hold
// takes the new body's bytes before it is built and gives back those of
// body and the images after: the caller must drop them.
func upstreamBody(body []byte, p *chatParams, images []fetched, hold *Hold) ([]byte, error) {
	var edits []edit
	if p.Stream {
		for _, so := range p.streamOptions {
			edits = append(edits, edit{at: so, text: []byte(streamOptionsUpstream)})
		}
		if len(p.streamOptions) == 0 {
			end := bytes.LastIndexByte(body, '}')
			if end < 0 {
				return nil, errs.E(errs.Invalid, "request body is not a JSON object")
			}
			edits = append(edits, edit{at: jsonscan.Span{Start: end, End: end}, text: []byte(`,"stream_options":` + streamOptionsUpstream)})
		}
	}
	for k := range images {
		edits = append(edits, edit{at: images[k].url, image: &images[k]})
	}
	if len(edits) == 0 {
		return body, nil
	}
	slices.SortFunc(edits, func(a, b edit) int { return a.at.Start - b.at.Start })
	prefix := func(im *fetched) []byte {
		b, _ := marshal("data:" + im.mediaType + ";base64,")
		return b[:len(b)-1] // the opening quote and the text; the data follows
	}
	size := len(body)
	var freed int64 = int64(len(body))
	for _, e := range edits {
		size -= e.at.End - e.at.Start
		if e.image != nil {
			size += len(prefix(e.image)) + base64.StdEncoding.EncodedLen(len(e.image.data)) + 1
			freed += int64(len(e.image.data))
		} else {
			size += len(e.text)
		}
	}
	if err := hold.Grow(int64(size)); err != nil {
		return nil, err
	}
	out := make([]byte, 0, size)
	last := 0
	for _, e := range edits {
		out = append(out, body[last:e.at.Start]...)
		if e.image != nil {
			out = append(out, prefix(e.image)...)
			out = base64.StdEncoding.AppendEncode(out, e.image.data)
			out = append(out, '"')
		} else {
			out = append(out, e.text...)
		}
		last = e.at.End
	}
	out = append(out, body[last:]...)
	hold.Shrink(freed)
	return out, nil
}
