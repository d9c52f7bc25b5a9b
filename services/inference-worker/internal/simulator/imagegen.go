package simulator

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"hash/crc32"
	"hash/fnv"
	"image"
	"image/png"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// imageRequest is the part of an OpenAI image generation request the
// simulator reads; other fields (quality, style, user) are ignored.
type imageRequest struct {
	Model          string `json:"model"`
	Prompt         string `json:"prompt"`
	N              *int   `json:"n"`
	Size           string `json:"size"`
	ResponseFormat string `json:"response_format"`
}

type imagesResponse struct {
	Created int64            `json:"created"`
	Data    []generatedImage `json:"data"`
	Usage   imageUsage       `json:"usage"`
}

type generatedImage struct {
	B64JSON       string `json:"b64_json"`
	RevisedPrompt string `json:"revised_prompt"`
}

type imageUsage struct {
	InputTokens        int `json:"input_tokens"`
	OutputTokens       int `json:"output_tokens"`
	TotalTokens        int `json:"total_tokens"`
	InputTokensDetails struct {
		TextTokens  int `json:"text_tokens"`
		ImageTokens int `json:"image_tokens"`
	} `json:"input_tokens_details"`
}

// Limits on image generation.
const (
	maxGeneratedImages = 10
	minImageSide       = 64
	maxImageSide       = 2048
)

// imageOutputTokens is what one generated image costs: a token per 32x32
// patch, so 1024 for 1024x1024.
func imageOutputTokens(width, height int) int {
	return ((width + 31) / 32) * ((height + 31) / 32)
}

// imageGenerations answers POST /v1/images/generations with n PNGs drawn
// from the prompt, after TimeToFirstToken.
func (s *Server) imageGenerations(w http.ResponseWriter, r *http.Request) {
	var req imageRequest
	if _, ok := s.decodeFor(w, r, &req); !ok {
		return
	}
	if strings.TrimSpace(req.Prompt) == "" {
		fail(w, invalid("prompt", "prompt is required"))
		return
	}
	n := 1
	if req.N != nil {
		if n = *req.N; n < 1 || n > maxGeneratedImages {
			fail(w, invalid("n", "n must be between 1 and %d", maxGeneratedImages))
			return
		}
	}
	width, height, ok := parseSize(req.Size)
	if !ok {
		fail(w, invalid("size", "size must be WIDTHxHEIGHT with each side between %d and %d, not %q", minImageSide, maxImageSide, req.Size))
		return
	}
	switch req.ResponseFormat {
	case "", "b64_json":
	case "url":
		fail(w, invalid("response_format", "the simulator returns b64_json only; the router turns images into URLs"))
		return
	default:
		fail(w, invalid("response_format", "response_format must be b64_json, not %q", req.ResponseFormat))
		return
	}

	h := fnv.New64a()
	h.Write([]byte(req.Prompt))
	seed := h.Sum64()
	out := imagesResponse{Data: make([]generatedImage, 0, n)}
	for i := range n {
		if r.Context().Err() != nil {
			return
		}
		b, err := encodePNG(drawImage(choiceSeed(seed, i), width, height))
		if err != nil {
			writeError(w, http.StatusInternalServerError, "encoding the image: "+err.Error(), "")
			return
		}
		out.Data = append(out.Data, generatedImage{
			B64JSON:       base64.StdEncoding.EncodeToString(b),
			RevisedPrompt: "[simulated] " + req.Prompt,
		})
	}
	if !sleep(r.Context(), s.cfg.TimeToFirstToken) {
		return
	}
	in := CountTokens(req.Prompt)
	out.Created = time.Now().Unix()
	out.Usage.InputTokens = in
	out.Usage.OutputTokens = n * imageOutputTokens(width, height)
	out.Usage.TotalTokens = in + out.Usage.OutputTokens
	out.Usage.InputTokensDetails.TextTokens = in
	writeJSON(w, http.StatusOK, out)
}

// parseSize reads "WxH", 1024x1024 when empty.
func parseSize(size string) (int, int, bool) {
	if size == "" {
		return 1024, 1024, true
	}
	ws, hs, ok := strings.Cut(size, "x")
	if !ok {
		return 0, 0, false
	}
	w, err1 := strconv.Atoi(ws)
	h, err2 := strconv.Atoi(hs)
	if err1 != nil || err2 != nil || w < minImageSide || w > maxImageSide || h < minImageSide || h > maxImageSide {
		return 0, 0, false
	}
	return w, h, true
}

// drawImage paints a deterministic picture for seed: a diagonal gradient
// between two colours with three to six filled circles and rectangles.
// Rows are copied from precomputed runs, so even 2048x2048 draws fast.
func drawImage(seed uint64, width, height int) *image.NRGBA {
	rng := rand.New(rand.NewPCG(seed, 0x1a6e))
	randColour := func() [4]byte {
		return [4]byte{uint8(rng.IntN(256)), uint8(rng.IntN(256)), uint8(rng.IntN(256)), 0xff}
	}
	from, to := randColour(), randColour()
	img := image.NewNRGBA(image.Rect(0, 0, width, height))
	// Pixel (x, y) has the gradient's colour at x+y, so row y is the
	// gradient from y on.
	span := width + height - 1
	gradient := make([]byte, 4*span)
	for t := range span {
		for c := range 3 {
			gradient[4*t+c] = uint8(int(from[c]) + (int(to[c])-int(from[c]))*t/(span-1))
		}
		gradient[4*t+3] = 0xff
	}
	for y := range height {
		copy(img.Pix[y*img.Stride:], gradient[4*y:4*(y+width)])
	}
	short := min(width, height)
	for range 3 + rng.IntN(4) {
		c := randColour()
		cx, cy := rng.IntN(width), rng.IntN(height)
		rad := short/10 + rng.IntN(short/4)
		circle := rng.IntN(2) == 0
		run := bytes.Repeat(c[:], 2*rad+1)
		for y := max(cy-rad, 0); y < min(cy+rad+1, height); y++ {
			half := rad
			if circle {
				dy := y - cy
				half = int(math.Sqrt(float64(rad*rad - dy*dy)))
			}
			x0, x1 := max(cx-half, 0), min(cx+half+1, width)
			if x0 < x1 {
				copy(img.Pix[y*img.Stride+4*x0:y*img.Stride+4*x1], run)
			}
		}
	}
	return img
}

// simulatedComment is written into every generated PNG.
const simulatedComment = "simulated by the Modelport simulator engine; not real model output"

// encodePNG encodes img with a tEXt Comment chunk that says it is
// simulated, right after the header.
func encodePNG(img image.Image) ([]byte, error) {
	var b bytes.Buffer
	if err := (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&b, img); err != nil {
		return nil, err
	}
	const afterIHDR = 8 + 4 + 4 + 13 + 4 // signature, then IHDR's length, type, data and CRC
	raw := b.Bytes()
	data := []byte("Comment\x00" + simulatedComment)
	chunk := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
	chunk = append(chunk, "tEXt"...)
	chunk = append(chunk, data...)
	chunk = binary.BigEndian.AppendUint32(chunk, crc32.ChecksumIEEE(chunk[4:]))
	out := make([]byte, 0, len(raw)+len(chunk))
	out = append(out, raw[:afterIHDR]...)
	out = append(out, chunk...)
	return append(out, raw[afterIHDR:]...), nil
}
