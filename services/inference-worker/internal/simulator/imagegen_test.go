package simulator_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"image"
	"image/png"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

type imagesAnswer struct {
	Created int64 `json:"created"`
	Data    []struct {
		B64JSON       string `json:"b64_json"`
		RevisedPrompt string `json:"revised_prompt"`
	} `json:"data"`
	Usage struct {
		InputTokens        int `json:"input_tokens"`
		OutputTokens       int `json:"output_tokens"`
		TotalTokens        int `json:"total_tokens"`
		InputTokensDetails struct {
			TextTokens  int `json:"text_tokens"`
			ImageTokens int `json:"image_tokens"`
		} `json:"input_tokens_details"`
	} `json:"usage"`
}

func generate(t *testing.T, base string, req map[string]any) imagesAnswer {
	t.Helper()
	status, body := post(t, base+"/images/generations", req)
	if status != http.StatusOK {
		t.Fatalf("status %d: %s", status, body)
	}
	var a imagesAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return a
}

func TestImageGenerations(t *testing.T) {
	base := start(t)
	prompt := "a lighthouse at dusk"
	tests := []struct {
		name   string
		extra  map[string]any
		n      int
		w, h   int
		tokens int // output tokens per image: one per 32x32 patch
	}{
		{name: "defaults", n: 1, w: 1024, h: 1024, tokens: 1024},
		{name: "small and wide", extra: map[string]any{"size": "256x64", "n": 3}, n: 3, w: 256, h: 64, tokens: 8 * 2},
		{name: "odd size", extra: map[string]any{"size": "100x70", "response_format": "b64_json"}, n: 1, w: 100, h: 70, tokens: 4 * 3},
		{name: "largest", extra: map[string]any{"size": "2048x64"}, n: 1, w: 2048, h: 64, tokens: 64 * 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := map[string]any{"model": servedName, "prompt": prompt, "quality": "high"}
			for k, v := range tc.extra {
				req[k] = v
			}
			a := generate(t, base, req)
			if a.Created == 0 {
				t.Error("created is zero")
			}
			if got, want := len(a.Data), tc.n; got != want {
				t.Fatalf("got %d images, want %d", got, want)
			}
			seen := map[string]bool{}
			for i, d := range a.Data {
				if got, want := d.RevisedPrompt, "[simulated] "+prompt; got != want {
					t.Errorf("revised_prompt = %q, want %q", got, want)
				}
				raw, err := base64.StdEncoding.DecodeString(d.B64JSON)
				if err != nil {
					t.Fatalf("image %d: b64_json: %v", i, err)
				}
				if !bytes.Contains(raw, []byte("simulated by the Modelport simulator engine")) {
					t.Errorf("image %d: the PNG carries no simulated comment", i)
				}
				img, err := png.Decode(bytes.NewReader(raw))
				if err != nil {
					t.Fatalf("image %d: not a PNG: %v", i, err)
				}
				if got, want := img.Bounds(), image.Rect(0, 0, tc.w, tc.h); got != want {
					t.Errorf("image %d: bounds %v, want %v", i, got, want)
				}
				seen[d.B64JSON] = true
			}
			if got, want := len(seen), tc.n; got != want {
				t.Errorf("%d distinct images among %d", got, want)
			}
			u := a.Usage
			if got, want := u.InputTokens, simulator.CountTokens(prompt); got != want {
				t.Errorf("input_tokens = %d, want %d", got, want)
			}
			if got, want := u.InputTokensDetails.TextTokens, u.InputTokens; got != want {
				t.Errorf("text_tokens = %d, want %d", got, want)
			}
			if got, want := u.InputTokensDetails.ImageTokens, 0; got != want {
				t.Errorf("image_tokens = %d, want %d", got, want)
			}
			if got, want := u.OutputTokens, tc.n*tc.tokens; got != want {
				t.Errorf("output_tokens = %d, want %d", got, want)
			}
			if got, want := u.TotalTokens, u.InputTokens+u.OutputTokens; got != want {
				t.Errorf("total_tokens = %d, want %d", got, want)
			}
		})
	}
}

func TestImageGenerationsDeterministic(t *testing.T) {
	base := start(t)
	req := func(prompt string) map[string]any {
		return map[string]any{"model": servedName, "prompt": prompt, "size": "128x96", "n": 2}
	}
	first := generate(t, base, req("a red fox"))
	second := generate(t, base, req("a red fox"))
	other := generate(t, base, req("a blue whale"))
	for i := range first.Data {
		if got, want := second.Data[i].B64JSON, first.Data[i].B64JSON; got != want {
			t.Errorf("image %d differs between identical requests", i)
		}
		if other.Data[i].B64JSON == first.Data[i].B64JSON {
			t.Errorf("image %d is the same for another prompt", i)
		}
	}
}

func TestImageGenerationsErrors(t *testing.T) {
	base := start(t)
	tests := []struct {
		name       string
		body       any
		wantStatus int
		wantParam  string
	}{
		{name: "wrong model", body: map[string]any{"model": "u-x/y", "prompt": "p"}, wantStatus: http.StatusNotFound, wantParam: "model"},
		{name: "no prompt", body: map[string]any{"model": servedName}, wantStatus: http.StatusBadRequest, wantParam: "prompt"},
		{name: "blank prompt", body: map[string]any{"model": servedName, "prompt": "  "}, wantStatus: http.StatusBadRequest, wantParam: "prompt"},
		{name: "n zero", body: map[string]any{"model": servedName, "prompt": "p", "n": 0}, wantStatus: http.StatusBadRequest, wantParam: "n"},
		{name: "n eleven", body: map[string]any{"model": servedName, "prompt": "p", "n": 11}, wantStatus: http.StatusBadRequest, wantParam: "n"},
		{name: "n a string", body: map[string]any{"model": servedName, "prompt": "p", "n": "2"}, wantStatus: http.StatusBadRequest, wantParam: "n"},
		{name: "size too small", body: map[string]any{"model": servedName, "prompt": "p", "size": "32x32"}, wantStatus: http.StatusBadRequest, wantParam: "size"},
		{name: "size too large", body: map[string]any{"model": servedName, "prompt": "p", "size": "4096x1024"}, wantStatus: http.StatusBadRequest, wantParam: "size"},
		{name: "size malformed", body: map[string]any{"model": servedName, "prompt": "p", "size": "large"}, wantStatus: http.StatusBadRequest, wantParam: "size"},
		{name: "response_format url", body: map[string]any{"model": servedName, "prompt": "p", "response_format": "url"}, wantStatus: http.StatusBadRequest, wantParam: "response_format"},
		{name: "response_format other", body: map[string]any{"model": servedName, "prompt": "p", "response_format": "svg"}, wantStatus: http.StatusBadRequest, wantParam: "response_format"},
		{name: "not JSON", body: `{"model":`, wantStatus: http.StatusBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assertError(t, base+"/images/generations", tc.body, tc.wantStatus, tc.wantParam, "")
		})
	}
}

// Both endpoints read the body the same way; one is checked.
func TestRequestBodyLimit(t *testing.T) {
	base := start(t)
	head := `{"model":"` + servedName + `","messages":[{"role":"user","content":"`
	tail := `"}]}`
	body := io.MultiReader(strings.NewReader(head), io.LimitReader(letters{}, 32<<20), strings.NewReader(tail))
	resp, err := http.Post(base+"/chat/completions", "application/json", body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if got, want := resp.StatusCode, http.StatusRequestEntityTooLarge; got != want {
		t.Errorf("status %d, want %d", got, want)
	}
}

// letters reads as an endless run of "a".
type letters struct{}

var block = bytes.Repeat([]byte("a"), 64<<10)

func (letters) Read(p []byte) (int, error) {
	return copy(p, block), nil
}
