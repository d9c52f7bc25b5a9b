package simulator

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"image"
	"image/color"
	_ "image/gif" // registers GIF for image.Decode
	_ "image/jpeg"
	_ "image/png"
	"io"
	"math"
	"net/http"
	"strings"
	"time"
)

// Limits on image inputs.
const (
	imageFetchTimeout = 10 * time.Second
	maxImageBytes     = 20 << 20
	maxImagePixels    = 40_000_000
)

// imageInfo is what the simulator reads from an image input.
type imageInfo struct {
	width, height int
	format        string      // png, jpeg or gif
	dominant      color.NRGBA // see dominantColour
	tokens        int         // prompt tokens the image costs
}

// describe is how the answer reports the image.
func (im imageInfo) describe() string {
	return fmt.Sprintf("%dx%d %s, dominant colour #%02x%02x%02x", im.width, im.height, im.format, im.dominant.R, im.dominant.G, im.dominant.B)
}

// appendTokens appends the image's prompt tokens to tokens: ids outside
// cl100k_base's, drawn from what the answer says of the image, so the same
// image is the same tokens and a different one almost surely is not.
func (im imageInfo) appendTokens(tokens []uint32) []uint32 {
	h := fnv.New32a()
	h.Write([]byte(im.describe()))
	base := h.Sum32()
	for i := range im.tokens {
		tokens = append(tokens, 300_000+(base+uint32(i))%(1<<30))
	}
	return tokens
}

// loadImage reads, decodes and measures the image ref points at: a base64
// data URL, or an http(s) URL fetched within imageFetchTimeout and
// maxImageBytes. Anything it cannot read is the client's error.
func (s *Server) loadImage(ctx context.Context, ref imageRef) (imageInfo, *requestError) {
	data, err := s.readImageURL(ctx, ref.url)
	if err != nil {
		return imageInfo{}, invalid("messages", "%s: %v", ref.where, err)
	}
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return imageInfo{}, invalid("messages", "%s: %v", ref.where, decodeError(err))
	}
	if cfg.Width < 1 || cfg.Height < 1 || cfg.Width*cfg.Height > maxImagePixels {
		return imageInfo{}, invalid("messages", "%s: the image is %dx%d; at most %d pixels are accepted", ref.where, cfg.Width, cfg.Height, maxImagePixels)
	}
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return imageInfo{}, invalid("messages", "%s: %v", ref.where, decodeError(err))
	}
	return imageInfo{
		width: cfg.Width, height: cfg.Height, format: format,
		dominant: dominantColour(img),
		tokens:   imageTokens(cfg.Width, cfg.Height, ref.detail),
	}, nil
}

func decodeError(err error) error {
	if errors.Is(err, image.ErrFormat) {
		return errors.New("the image is not PNG, JPEG or GIF")
	}
	return fmt.Errorf("the image cannot be decoded: %v", err)
}

// readImageURL returns the bytes url holds.
func (s *Server) readImageURL(ctx context.Context, url string) ([]byte, error) {
	scheme, rest, _ := strings.Cut(url, ":")
	switch strings.ToLower(scheme) {
	case "data":
		meta, payload, ok := strings.Cut(rest, ",")
		if !ok || !strings.HasSuffix(strings.ToLower(meta), ";base64") {
			return nil, errors.New("a data URL must have the form data:<media type>;base64,<data>")
		}
		data, err := base64.StdEncoding.DecodeString(payload)
		if err != nil {
			return nil, fmt.Errorf("the data URL is not valid base64: %v", err)
		}
		return data, nil
	case "http", "https":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, fmt.Errorf("bad image URL: %v", err)
		}
		resp, err := s.fetch.Do(req)
		if err != nil {
			return nil, fmt.Errorf("fetching the image: %v", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("fetching the image: %s answered %s", url, resp.Status)
		}
		if resp.ContentLength > maxImageBytes {
			return nil, fmt.Errorf("the image is larger than %d MiB", maxImageBytes>>20)
		}
		data, err := io.ReadAll(io.LimitReader(resp.Body, maxImageBytes+1))
		if err != nil {
			return nil, fmt.Errorf("fetching the image: %v", err)
		}
		if len(data) > maxImageBytes {
			return nil, fmt.Errorf("the image is larger than %d MiB", maxImageBytes>>20)
		}
		return data, nil
	default:
		return nil, fmt.Errorf("unsupported image URL scheme %q: use a data: URL or http(s)", scheme)
	}
}

// dominantColour returns the mean colour of the pixels in the most common
// colour bucket of img, a bucket being a colour with each channel
// quantised to its top three bits (512 buckets). The mean, rather than the
// bucket's centre, gives back a flat colour exactly. Ties go to the bucket
// with the lowest index (red bits, then green, then blue). Alpha is
// ignored: pixels count with their unpremultiplied colour.
func dominantColour(img image.Image) color.NRGBA {
	var count [512]uint64
	var sum [512][3]uint64
	add := func(r, g, b uint8, n uint64) {
		k := int(r>>5)<<6 | int(g>>5)<<3 | int(b>>5)
		count[k] += n
		sum[k][0] += uint64(r) * n
		sum[k][1] += uint64(g) * n
		sum[k][2] += uint64(b) * n
	}
	bounds := img.Bounds()
	switch m := img.(type) {
	case *image.Paletted:
		var perIndex [256]uint64
		for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
			row := m.Pix[m.PixOffset(bounds.Min.X, y):][:bounds.Dx()]
			for _, i := range row {
				perIndex[i]++
			}
		}
		for i, n := range perIndex {
			if n == 0 {
				continue
			}
			c := color.NRGBA{A: 0xff}
			if i < len(m.Palette) {
				c = color.NRGBAModel.Convert(m.Palette[i]).(color.NRGBA)
			}
			add(c.R, c.G, c.B, n)
		}
	case *image.NRGBA:
		for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
			row := m.Pix[m.PixOffset(bounds.Min.X, y):][:4*bounds.Dx()]
			for x := 0; x < len(row); x += 4 {
				add(row[x], row[x+1], row[x+2], 1)
			}
		}
	default:
		for y := bounds.Min.Y; y < bounds.Max.Y; y++ {
			for x := bounds.Min.X; x < bounds.Max.X; x++ {
				c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
				add(c.R, c.G, c.B, 1)
			}
		}
	}
	best := 0
	for k := range count {
		if count[k] > count[best] {
			best = k
		}
	}
	n := count[best]
	if n == 0 {
		return color.NRGBA{A: 0xff}
	}
	mean := func(s uint64) uint8 { return uint8((s + n/2) / n) }
	return color.NRGBA{R: mean(sum[best][0]), G: mean(sum[best][1]), B: mean(sum[best][2]), A: 0xff}
}

// imageTokens is what an image costs in the prompt, by OpenAI's
// documented formula: 85 at low detail; otherwise the image is scaled to
// fit 2048x2048, then scaled down so its short side is at most 768, and
// costs 85 plus 170 per 512x512 tile that covers it. Scaled sides are
// rounded down to whole pixels.
func imageTokens(width, height int, detail string) int {
	if detail == "low" {
		return 85
	}
	w, h := float64(width), float64(height)
	if long := max(w, h); long > 2048 {
		w, h = max(math.Floor(w*2048/long), 1), max(math.Floor(h*2048/long), 1)
	}
	if short := min(w, h); short > 768 {
		w, h = max(math.Floor(w*768/short), 1), max(math.Floor(h*768/short), 1)
	}
	tiles := math.Ceil(w/512) * math.Ceil(h/512)
	return 85 + 170*int(tiles)
}
