package simulator_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

// Fixture colours: each sits in its own 3-bit bucket.
var (
	red   = color.NRGBA{R: 200, G: 30, B: 40, A: 0xff}
	blue  = color.NRGBA{R: 20, G: 60, B: 210, A: 0xff}
	green = color.NRGBA{R: 40, G: 180, B: 90, A: 0xff}
)

// paletted returns a w×h image whose first three quarters of columns
// (rounded down to a multiple of 16, so JPEG blocks hold one colour) are
// main and the rest other.
func paletted(w, h int, main, other color.NRGBA) *image.Paletted {
	img := image.NewPaletted(image.Rect(0, 0, w, h), color.Palette{main, other})
	split := max(w*3/4/16*16, w/2+1)
	for y := range h {
		for x := split; x < w; x++ {
			img.SetColorIndex(x, y, 1)
		}
	}
	return img
}

func fixturePNG(t *testing.T, w, h int, main, other color.NRGBA) []byte {
	t.Helper()
	// Drawn into NRGBA so the PNG is truecolour, not paletted.
	src := paletted(w, h, main, other)
	img := image.NewNRGBA(src.Bounds())
	for y := range h {
		for x := range w {
			img.Set(x, y, src.At(x, y))
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func fixtureJPEG(t *testing.T, w, h int, main, other color.NRGBA) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := jpeg.Encode(&b, paletted(w, h, main, other), &jpeg.Options{Quality: 100}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func fixtureGIF(t *testing.T, w, h int, main, other color.NRGBA) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := gif.Encode(&b, paletted(w, h, main, other), nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// fixturePalettedPNG is a cheap large PNG, for token costs.
func fixturePalettedPNG(t *testing.T, w, h int) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestSpeed}
	if err := enc.Encode(&b, paletted(w, h, green, red)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func dataURL(mediaType string, data []byte) string {
	return "data:" + mediaType + ";base64," + base64.StdEncoding.EncodeToString(data)
}

func imagePart(url, detail string) map[string]any {
	u := map[string]any{"url": url}
	if detail != "" {
		u["detail"] = detail
	}
	return map[string]any{"type": "image_url", "image_url": u}
}

func imageMessage(text string, parts ...map[string]any) []map[string]any {
	content := []map[string]any{{"type": "text", "text": text}}
	return []map[string]any{{"role": "user", "content": append(content, parts...)}}
}

var imageLine = regexp.MustCompile(`image (\d+): (\d+)x(\d+) (\w+), dominant colour #([0-9a-f]{6})\.`)

type seenImage struct {
	width, height int
	format        string
	colour        color.NRGBA
}

// seenImages reads the image lines of an answer.
func seenImages(t *testing.T, content string) []seenImage {
	t.Helper()
	var out []seenImage
	for i, m := range imageLine.FindAllStringSubmatch(content, -1) {
		if got, want := m[1], strconv.Itoa(i+1); got != want {
			t.Errorf("image line %d is numbered %s", i+1, got)
		}
		w, _ := strconv.Atoi(m[2])
		h, _ := strconv.Atoi(m[3])
		rgb, _ := strconv.ParseUint(m[5], 16, 32)
		out = append(out, seenImage{w, h, m[4], color.NRGBA{R: uint8(rgb >> 16), G: uint8(rgb >> 8), B: uint8(rgb), A: 0xff}})
	}
	return out
}

func near(a, b uint8, tolerance int) bool {
	d := int(a) - int(b)
	return d >= -tolerance && d <= tolerance
}

func TestChatImageUnderstanding(t *testing.T) {
	base := start(t)
	// The dominant colour is the mean of the most common 3-bit bucket, so
	// lossless fixtures report their main colour exactly; JPEG may move it
	// by a few levels.
	tests := []struct {
		name      string
		data      []byte
		media     string
		w, h      int
		format    string
		want      color.NRGBA
		tolerance int
	}{
		{name: "png", data: fixturePNG(t, 64, 48, red, blue), media: "image/png", w: 64, h: 48, format: "png", want: red},
		{name: "jpeg", data: fixtureJPEG(t, 96, 64, blue, green), media: "image/jpeg", w: 96, h: 64, format: "jpeg", want: blue, tolerance: 3},
		{name: "gif", data: fixtureGIF(t, 40, 30, green, red), media: "image/gif", w: 40, h: 30, format: "gif", want: green},
		{name: "media type is not trusted", data: fixtureGIF(t, 40, 30, green, red), media: "image/png", w: 40, h: 30, format: "gif", want: green},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := chatFull(t, base, map[string]any{
				"model": servedName, "messages": imageMessage("What is this?", imagePart(dataURL(tc.media, tc.data), "")),
			})
			content := *c.Choices[0].Message.Content
			if !strings.HasPrefix(content, "[simulated by the Modelport simulator engine") {
				t.Errorf("content does not open with the notice: %q", content)
			}
			seen := seenImages(t, content)
			if len(seen) != 1 {
				t.Fatalf("got %d image lines, want 1: %q", len(seen), content)
			}
			got := seen[0]
			if got.width != tc.w || got.height != tc.h || got.format != tc.format {
				t.Errorf("image = %dx%d %s, want %dx%d %s", got.width, got.height, got.format, tc.w, tc.h, tc.format)
			}
			if !near(got.colour.R, tc.want.R, tc.tolerance) || !near(got.colour.G, tc.want.G, tc.tolerance) || !near(got.colour.B, tc.want.B, tc.tolerance) {
				t.Errorf("dominant colour = %v, want %v (±%d)", got.colour, tc.want, tc.tolerance)
			}
		})
	}

	t.Run("several images in order", func(t *testing.T) {
		c := chatFull(t, base, map[string]any{
			"model": servedName, "messages": []map[string]any{
				{"role": "user", "content": []map[string]any{imagePart(dataURL("image/png", fixturePNG(t, 64, 48, red, blue)), "low")}},
				{"role": "assistant", "content": "ok"},
				{"role": "user", "content": []map[string]any{imagePart(dataURL("image/gif", fixtureGIF(t, 40, 30, blue, red)), "high")}},
			},
		})
		seen := seenImages(t, *c.Choices[0].Message.Content)
		want := []seenImage{{64, 48, "png", red}, {40, 30, "gif", blue}}
		if fmt.Sprint(seen) != fmt.Sprint(want) {
			t.Errorf("images = %v, want %v", seen, want)
		}
	})
}

func TestChatImageTokens(t *testing.T) {
	base := start(t)
	text := "Describe these pictures."
	plain := chatFull(t, base, map[string]any{"model": servedName, "messages": messages("user", text)})
	small := dataURL("image/png", fixturePNG(t, 64, 48, red, blue))
	square := dataURL("image/png", fixturePalettedPNG(t, 1024, 1024))
	wide := dataURL("image/png", fixturePalettedPNG(t, 1536, 600))
	tests := []struct {
		name  string
		parts []map[string]any
		want  int // image tokens
	}{
		{name: "low", parts: []map[string]any{imagePart(small, "low")}, want: 85},
		{name: "high, one tile", parts: []map[string]any{imagePart(small, "high")}, want: 85 + 170},
		{name: "auto is high", parts: []map[string]any{imagePart(small, "")}, want: 85 + 170},
		// 1024x1024 → 768x768 → 2x2 tiles.
		{name: "high 1024x1024", parts: []map[string]any{imagePart(square, "high")}, want: 765},
		{name: "low 1024x1024", parts: []map[string]any{imagePart(square, "low")}, want: 85},
		// 1536x600: short side under 768, 3x2 tiles.
		{name: "high 1536x600", parts: []map[string]any{imagePart(wide, "high")}, want: 85 + 170*6},
		{name: "two images", parts: []map[string]any{imagePart(small, "low"), imagePart(square, "high")}, want: 85 + 765},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := chatFull(t, base, map[string]any{"model": servedName, "messages": imageMessage(text, tc.parts...)})
			if got, want := c.Usage.PromptTokens, plain.Usage.PromptTokens+tc.want; got != want {
				t.Errorf("prompt_tokens = %d, want %d (text only: %d)", got, want, plain.Usage.PromptTokens)
			}
			if got, want := c.Usage.CompletionTokens, simulator.CountTokens(*c.Choices[0].Message.Content); got != want {
				t.Errorf("completion_tokens = %d, want %d", got, want)
			}
		})
	}
}

var mebibyte = make([]byte, 1<<20)

func TestChatImageURL(t *testing.T) {
	pic := fixturePNG(t, 64, 48, red, blue)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/pic.png":
			w.Header().Set("Content-Type", "image/png")
			_, _ = w.Write(pic)
		case "/huge": // declared too large: refused before reading
			w.Header().Set("Content-Length", strconv.Itoa(20<<20+1))
		case "/huge-chunked": // found too large while reading
			for range 21 {
				_, _ = w.Write(mebibyte)
			}
		case "/text":
			_, _ = w.Write([]byte("not an image"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	base := start(t)

	c := chatFull(t, base, map[string]any{"model": servedName, "messages": imageMessage("hi", imagePart(srv.URL+"/pic.png", "low"))})
	seen := seenImages(t, *c.Choices[0].Message.Content)
	if want := []seenImage{{64, 48, "png", red}}; fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("images = %v, want %v", seen, want)
	}

	tests := []struct {
		name    string
		url     string
		wantMsg string
	}{
		{name: "not found", url: srv.URL + "/missing", wantMsg: "404"},
		{name: "over 20 MiB", url: srv.URL + "/huge", wantMsg: "20 MiB"},
		{name: "over 20 MiB, chunked", url: srv.URL + "/huge-chunked", wantMsg: "20 MiB"},
		{name: "not an image", url: srv.URL + "/text", wantMsg: "not PNG, JPEG or GIF"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assertError(t, base+"/chat/completions", map[string]any{
				"model": servedName, "messages": imageMessage("hi", imagePart(tc.url, "")),
			}, http.StatusBadRequest, "messages", tc.wantMsg)
		})
	}
}

func TestChatImageErrors(t *testing.T) {
	base := start(t)
	tests := []struct {
		name    string
		part    map[string]any
		wantMsg string
	}{
		{name: "bad base64", part: imagePart("data:image/png;base64,!!!not-base64!!!", ""), wantMsg: "base64"},
		{name: "not base64-encoded", part: imagePart("data:image/png,rawbytes", ""), wantMsg: "base64"},
		{name: "PNG signature only", part: imagePart("data:image/png;base64,iVBORw0KGgo=", ""), wantMsg: "cannot be decoded"},
		{name: "not an image", part: imagePart(dataURL("image/png", []byte("hello")), ""), wantMsg: "not PNG, JPEG or GIF"},
		{name: "unsupported scheme", part: imagePart("ftp://example.com/a.png", ""), wantMsg: "scheme"},
		{name: "bad detail", part: imagePart(dataURL("image/png", fixturePNG(t, 8, 8, red, blue)), "ultra"), wantMsg: "detail"},
		{name: "image_url missing", part: map[string]any{"type": "image_url"}, wantMsg: "url"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assertError(t, base+"/chat/completions", map[string]any{
				"model": servedName, "messages": imageMessage("hi", tc.part),
			}, http.StatusBadRequest, "messages", tc.wantMsg)
		})
	}
}
