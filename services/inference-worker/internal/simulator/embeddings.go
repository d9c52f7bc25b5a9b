package simulator

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"net/http"
)

// DefaultDimensions is the length of the simulator's embedding vectors
// for a model whose length the catalog does not give.
const DefaultDimensions = 768

// embeddingRequest is an OpenAI embeddings request.
type embeddingRequest struct {
	Model          string          `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat string          `json:"encoding_format"`
	Dimensions     *int            `json:"dimensions"`
}

type embeddingList struct {
	Object string      `json:"object"`
	Data   []embedding `json:"data"`
	Model  string      `json:"model"`
	Usage  struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

type embedding struct {
	Object    string `json:"object"`
	Index     int    `json:"index"`
	Embedding any    `json:"embedding"` // []float32, or a base64 string of little-endian float32s
}

// embeddings answers with a unit vector per input, drawn from a seed that
// hashes the base model and the input: the same input always gets the
// same vector, and the model's full length (Config.Dimensions); a
// shorter dimensions takes the vector's head and scales it back to unit
// length, as Matryoshka-trained models do. The usage counts the inputs'
// tokens.
func (s *Server) embeddings(w http.ResponseWriter, r *http.Request) {
	var req embeddingRequest
	base, ok := s.decodeFor(w, r, &req)
	if !ok {
		return
	}
	texts, counts, rerr := prompts(req.Input)
	if rerr != nil {
		rerr.param, rerr.msg = "input", "input must be a string, an array of strings, or token arrays"
		fail(w, rerr)
		return
	}
	for i, t := range texts {
		if t == "" {
			fail(w, invalid("input", "input[%d] is an empty string", i))
			return
		}
	}
	full := s.cfg.Dimensions
	if full <= 0 {
		full = DefaultDimensions
	}
	dims := full
	if req.Dimensions != nil {
		if *req.Dimensions < 1 || *req.Dimensions > full {
			fail(w, invalid("dimensions", "dimensions must be between 1 and %d, the length of this model's vectors", full))
			return
		}
		dims = *req.Dimensions
	}
	switch req.EncodingFormat {
	case "", "float", "base64":
	default:
		fail(w, invalid("encoding_format", "encoding_format must be float or base64, not %q", req.EncodingFormat))
		return
	}
	out := embeddingList{Object: "list", Model: req.Model, Data: []embedding{}}
	for i, text := range texts {
		v := unitVector(base, text, full, dims)
		e := embedding{Object: "embedding", Index: i, Embedding: v}
		if req.EncodingFormat == "base64" {
			b := make([]byte, 0, 4*len(v))
			for _, x := range v {
				b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
			}
			e.Embedding = base64.StdEncoding.EncodeToString(b)
		}
		out.Data = append(out.Data, e)
		out.Usage.PromptTokens += counts[i]
	}
	out.Usage.TotalTokens = out.Usage.PromptTokens
	if !sleep(r.Context(), s.cfg.TimeToFirstToken) {
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// unitVector is the embedding of text by base: full normally distributed
// components drawn from a seed that hashes both, of which the first dims
// are kept and scaled to unit length.
func unitVector(base, text string, full, dims int) []float32 {
	h := fnv.New64a()
	h.Write([]byte(base + "\x00" + text))
	rng := rand.New(rand.NewPCG(h.Sum64(), 0xe4bed))
	v := make([]float64, full)
	for i := range v {
		v[i] = rng.NormFloat64()
	}
	v = v[:dims]
	var norm float64
	for _, x := range v {
		norm += x * x
	}
	norm = math.Sqrt(norm)
	out := make([]float32, dims)
	for i, x := range v {
		out[i] = float32(x / norm)
	}
	return out
}
