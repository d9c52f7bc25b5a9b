package simulator_test

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"net/http"
	"testing"

	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

type embeddingList struct {
	Object string `json:"object"`
	Model  string `json:"model"`
	Data   []struct {
		Object    string          `json:"object"`
		Index     int             `json:"index"`
		Embedding json.RawMessage `json:"embedding"`
	} `json:"data"`
	Usage struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

func embed(t *testing.T, base string, req map[string]any) embeddingList {
	t.Helper()
	status, body := post(t, base+"/embeddings", req)
	if status != http.StatusOK {
		t.Fatalf("status %d, body %s", status, body)
	}
	var out embeddingList
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	return out
}

func floats(t *testing.T, raw json.RawMessage) []float32 {
	t.Helper()
	var v []float32
	if err := json.Unmarshal(raw, &v); err == nil {
		return v
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("embedding %s is neither floats nor base64", raw)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b)%4 != 0 {
		t.Fatalf("embedding %q: not base64 float32s: %v", s, err)
	}
	for i := 0; i < len(b); i += 4 {
		v = append(v, math.Float32frombits(binary.LittleEndian.Uint32(b[i:])))
	}
	return v
}

func norm(v []float32) float64 {
	var n float64
	for _, x := range v {
		n += float64(x) * float64(x)
	}
	return math.Sqrt(n)
}

func TestEmbeddings(t *testing.T) {
	base := startWith(t, simulator.Config{ServedName: servedName, BaseModel: "nomic-embed-text-v1.5", Dimensions: 64})
	texts := []string{"The food was delicious and the waiter was kind.", "naïve café ☕ 日本語"}
	got := embed(t, base, map[string]any{"model": servedName, "input": texts})
	if got.Object != "list" || got.Model != servedName || len(got.Data) != 2 {
		t.Fatalf("answer %+v", got)
	}
	want := simulator.CountTokens(texts[0]) + simulator.CountTokens(texts[1])
	if got.Usage.PromptTokens != want || got.Usage.TotalTokens != want {
		t.Errorf("usage %+v, want %d prompt and total tokens", got.Usage, want)
	}
	vecs := make([][]float32, 2)
	for i, d := range got.Data {
		vecs[i] = floats(t, d.Embedding)
		if d.Index != i || d.Object != "embedding" || len(vecs[i]) != 64 || math.Abs(norm(vecs[i])-1) > 1e-5 {
			t.Errorf("data[%d]: index %d, object %q, %d dimensions, norm %v; want a unit vector of 64", i, d.Index, d.Object, len(vecs[i]), norm(vecs[i]))
		}
	}
	if slicesEqual(vecs[0], vecs[1]) {
		t.Error("two inputs got the same vector")
	}

	t.Run("deterministic, one input alone or in a batch", func(t *testing.T) {
		one := embed(t, base, map[string]any{"model": servedName, "input": texts[1]})
		if v := floats(t, one.Data[0].Embedding); !slicesEqual(v, vecs[1]) {
			t.Error("the same input got another vector")
		}
	})
	t.Run("base64 holds the same floats", func(t *testing.T) {
		b := embed(t, base, map[string]any{"model": servedName, "input": texts, "encoding_format": "base64"})
		var s string
		if err := json.Unmarshal(b.Data[0].Embedding, &s); err != nil {
			t.Fatalf("base64 answer is not a string: %s", b.Data[0].Embedding)
		}
		if v := floats(t, b.Data[0].Embedding); !slicesEqual(v, vecs[0]) {
			t.Error("base64 vector differs from the float one")
		}
	})
	t.Run("dimensions shortens to a unit vector", func(t *testing.T) {
		d := embed(t, base, map[string]any{"model": servedName, "input": texts[0], "dimensions": 8})
		v := floats(t, d.Data[0].Embedding)
		if len(v) != 8 || math.Abs(norm(v)-1) > 1e-5 {
			t.Fatalf("%d dimensions, norm %v", len(v), norm(v))
		}
		// The head of the full vector, scaled: same direction.
		var dot float64
		for i := range v {
			dot += float64(v[i]) * float64(vecs[0][i])
		}
		if want := norm(vecs[0][:8]); math.Abs(dot-want) > 1e-4 {
			t.Errorf("not the head of the full vector: dot %v, want %v", dot, want)
		}
	})
	t.Run("token arrays count their tokens", func(t *testing.T) {
		d := embed(t, base, map[string]any{"model": servedName, "input": [][]int{{1, 2, 3}, {4, 5}}})
		if len(d.Data) != 2 || d.Usage.PromptTokens != 5 {
			t.Errorf("%d vectors, %d tokens; want 2 and 5", len(d.Data), d.Usage.PromptTokens)
		}
	})
	t.Run("the default length", func(t *testing.T) {
		other := start(t)
		d := embed(t, other, map[string]any{"model": servedName, "input": "x"})
		if n := len(floats(t, d.Data[0].Embedding)); n != simulator.DefaultDimensions {
			t.Errorf("%d dimensions, want %d", n, simulator.DefaultDimensions)
		}
	})
	for _, tc := range []struct {
		name  string
		req   map[string]any
		param string
	}{
		{"dimensions over the model's", map[string]any{"model": servedName, "input": "x", "dimensions": 65}, "dimensions"},
		{"unknown encoding", map[string]any{"model": servedName, "input": "x", "encoding_format": "int8"}, "encoding_format"},
		{"no input", map[string]any{"model": servedName}, "input"},
		{"empty string", map[string]any{"model": servedName, "input": []string{"a", ""}}, "input"},
		{"object input", map[string]any{"model": servedName, "input": map[string]any{}}, "input"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := post(t, base+"/embeddings", tc.req)
			var e errorBody
			_ = json.Unmarshal(body, &e)
			if status != 400 || e.Error.Param == nil || *e.Error.Param != tc.param {
				t.Errorf("status %d, %s; want 400 naming %s", status, body, tc.param)
			}
		})
	}
}

func slicesEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
