package tinygguf

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// ChatTemplate is the model's chat template: ChatML, word for word as
// Qwen and many others ship it, so that engines recognise it (Ollama maps
// it to its own "chatml" template, with <|im_start|> and <|im_end|> as
// stop sequences).
const ChatTemplate = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"

// The special tokens, first in the vocabulary; the 256 byte tokens
// <0x00>…<0xFF> follow them.
const (
	TokenUnknown   = 0 // <unk>
	TokenBOS       = 1 // <s>
	TokenEOS       = 2 // </s>
	TokenIMStart   = 3 // <|im_start|>
	TokenIMEnd     = 4 // <|im_end|>: where an answer ends
	firstByte      = 5
	VocabularySize = firstByte + 256
)

// Options shape a tiny model. The zero value is the default model.
type Options struct {
	// Seed makes the weights: the same seed and options give the same
	// file, byte for byte. 0 is the default seed.
	Seed uint64
	// Layers is the number of transformer blocks; default 2.
	Layers int
	// ContextLength is the longest sequence it takes; default 2048.
	ContextLength int
	// MeanAnswerTokens is about how many tokens an answer runs, sampled at
	// temperature 1 (the OpenAI API's default), before the model ends it;
	// default 32.
	// Greedy decoding (temperature 0) never ends an answer: there,
	// max_tokens or a stop sequence does.
	MeanAnswerTokens int
}

// The shape of the default model: small enough to load in a moment on a
// CPU, big enough to be a real transformer (grouped-query attention,
// RoPE, a SwiGLU feed-forward).
const (
	embedding   = 64
	feedForward = 128
	heads       = 4
	kvHeads     = 2
	headDim     = embedding / heads
)

func (o Options) withDefaults() Options {
	if o.Seed == 0 {
		o.Seed = 20260101
	}
	if o.Layers == 0 {
		o.Layers = 2
	}
	if o.ContextLength == 0 {
		o.ContextLength = 2048
	}
	if o.MeanAnswerTokens == 0 {
		o.MeanAnswerTokens = 32
	}
	return o
}

// Vocabulary is the model's tokens: the special ones, then one per byte
// in llama.cpp's byte-token notation. Any text tokenizes, one token per
// byte; chat markup such as <|im_start|> is one token.
func Vocabulary() []string {
	v := []string{"<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"}
	for b := range 256 {
		v = append(v, fmt.Sprintf("<0x%02X>", b))
	}
	return v
}

// Token types as llama.cpp numbers them.
const (
	tokenNormal  int32 = 1
	tokenUnknown int32 = 2
	tokenControl int32 = 3
	tokenByte    int32 = 6
)

// Model returns a tiny llama-architecture chat model with random weights.
//
// Its answers are printable ASCII gibberish. The weights are random but
// shaped so that it behaves: one channel of the residual stream is held
// constant, and the output layer reads it to keep control tokens and
// unprintable bytes out of answers, and to give the end of an answer
// (<|im_end|>) a fixed small chance, so sampled answers end on their own
// after about MeanAnswerTokens tokens. Under greedy decoding that token
// never wins.
func Model(opts Options) (*File, error) {
	o := opts.withDefaults()
	if o.Layers < 1 || o.Layers > 32 || o.ContextLength < 64 || o.MeanAnswerTokens < 2 {
		return nil, fmt.Errorf("tinygguf: want 1-32 layers, a context of 64 tokens or more and answers of 2 tokens or more: %+v", opts)
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x6d6f64656c706f72)) // "modelpor"
	vocab := Vocabulary()
	scores := make([]float32, len(vocab))
	types := make([]int32, len(vocab))
	for i := range vocab {
		switch {
		case i == TokenUnknown:
			types[i] = tokenUnknown
		case i < firstByte:
			types[i] = tokenControl
		default:
			types[i] = tokenByte
		}
	}
	f := &File{KV: []KV{
		{"general.architecture", "llama"},
		{"general.type", "model"},
		{"general.name", "modelport-tiny"},
		{"general.description", "A tiny random-weights model for tests: its output is gibberish."},
		{"general.file_type", uint32(0)}, // all F32
		{"general.quantization_version", uint32(2)},
		{"llama.context_length", uint32(o.ContextLength)},
		{"llama.embedding_length", uint32(embedding)},
		{"llama.block_count", uint32(o.Layers)},
		{"llama.feed_forward_length", uint32(feedForward)},
		{"llama.attention.head_count", uint32(heads)},
		{"llama.attention.head_count_kv", uint32(kvHeads)},
		{"llama.attention.layer_norm_rms_epsilon", float32(1e-5)},
		{"llama.rope.dimension_count", uint32(headDim)},
		{"llama.rope.freq_base", float32(10000)},
		{"llama.vocab_size", uint32(len(vocab))},
		{"tokenizer.ggml.model", "llama"},
		{"tokenizer.ggml.pre", "default"},
		{"tokenizer.ggml.tokens", vocab},
		{"tokenizer.ggml.scores", scores},
		{"tokenizer.ggml.token_type", types},
		{"tokenizer.ggml.bos_token_id", uint32(TokenBOS)},
		{"tokenizer.ggml.eos_token_id", uint32(TokenIMEnd)},
		{"tokenizer.ggml.unknown_token_id", uint32(TokenUnknown)},
		{"tokenizer.ggml.add_bos_token", true},
		{"tokenizer.ggml.add_eos_token", false},
		{"tokenizer.ggml.add_space_prefix", false},
		{"tokenizer.chat_template", ChatTemplate},
	}}

	// Channel 0 of the residual stream is the constant channel: every
	// token embeds it at bias, and no block writes to it.
	const bias = 8.0
	normal := func(n int, std float64) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = float32(rng.NormFloat64() * std)
		}
		return out
	}
	ones := func(n int) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = 1
		}
		return out
	}
	// writesResidual zeroes a projection's row for channel 0. ggml keeps a
	// matrix {in, out} as out rows of in values.
	writesResidual := func(w []float32, in int) []float32 {
		clear(w[:in])
		return w
	}

	embd := normal(embedding*len(vocab), 1)
	for tok := range len(vocab) {
		embd[tok*embedding] = bias
	}
	f.Tensors = append(f.Tensors, Tensor{Name: "token_embd.weight", Shape: []uint64{embedding, uint64(len(vocab))}, Data: embd})
	for l := range o.Layers {
		blk := func(name string) string { return fmt.Sprintf("blk.%d.%s.weight", l, name) }
		proj := 1 / math.Sqrt(embedding)
		f.Tensors = append(f.Tensors,
			Tensor{Name: blk("attn_norm"), Shape: []uint64{embedding}, Data: ones(embedding)},
			Tensor{Name: blk("attn_q"), Shape: []uint64{embedding, embedding}, Data: normal(embedding*embedding, proj)},
			Tensor{Name: blk("attn_k"), Shape: []uint64{embedding, kvHeads * headDim}, Data: normal(embedding*kvHeads*headDim, proj)},
			Tensor{Name: blk("attn_v"), Shape: []uint64{embedding, kvHeads * headDim}, Data: normal(embedding*kvHeads*headDim, proj)},
			Tensor{Name: blk("attn_output"), Shape: []uint64{embedding, embedding}, Data: writesResidual(normal(embedding*embedding, proj), embedding)},
			Tensor{Name: blk("ffn_norm"), Shape: []uint64{embedding}, Data: ones(embedding)},
			Tensor{Name: blk("ffn_gate"), Shape: []uint64{embedding, feedForward}, Data: normal(embedding*feedForward, proj)},
			Tensor{Name: blk("ffn_up"), Shape: []uint64{embedding, feedForward}, Data: normal(embedding*feedForward, proj)},
			Tensor{Name: blk("ffn_down"), Shape: []uint64{feedForward, embedding}, Data: writesResidual(normal(feedForward*embedding, 1/math.Sqrt(feedForward)), feedForward)},
		)
	}
	f.Tensors = append(f.Tensors, Tensor{Name: "output_norm.weight", Shape: []uint64{embedding}, Data: ones(embedding)})

	// The output layer. After the final norm, channel 0 holds about
	// bias/rms ≈ constant; the other channels about unit noise.
	const spread = 1.5 // standard deviation of an answer token's logit
	out := make([]float32, embedding*len(vocab))
	const others = embedding - 1
	for tok := range len(vocab) {
		row := out[tok*embedding : (tok+1)*embedding]
		switch b := tok - firstByte; {
		case b >= 0x20 && b < 0x7f && b != '<':
			// Printable ASCII answers; '<' stays out so that no answer
			// starts a chat marker.
			for i := 1; i < embedding; i++ {
				row[i] = float32(rng.NormFloat64() * spread / math.Sqrt(others))
			}
		case tok == TokenIMEnd:
			row[0] = float32(endLogit(o.MeanAnswerTokens, spread) / channel0)
		default:
			row[0] = float32(-40 / channel0) // never
		}
	}
	f.Tensors = append(f.Tensors, Tensor{Name: "output.weight", Shape: []uint64{embedding, uint64(len(vocab))}, Data: out})
	return f, nil
}

// channel0 is about what the constant channel holds after the final norm:
// bias over the root mean square of a residual stream whose other
// channels carry about unit variance.
var channel0 = 8.0 / math.Sqrt((8.0*8.0+embedding-1)/embedding)

// endLogit is the logit for <|im_end|> that gives it a chance of about
// 1/mean per token when sampling at temperature 1 among the 94 printable
// tokens, whose logits spread normally.
func endLogit(mean int, spread float64) float64 {
	const temperature = 1.0
	// Σ exp(l/T) over n normal logits ≈ n·exp(σ²/2T²).
	sum := 94 * math.Exp(spread*spread/(2*temperature*temperature))
	p := 1 / float64(mean)
	return temperature * math.Log(p*sum/(1-p))
}

// AdapterOptions shape a LoRA adapter for a tiny model.
type AdapterOptions struct {
	// Seed makes the weights; 0 is the default seed.
	Seed uint64
	// Layers must match the base model's; default 2.
	Layers int
	// Rank is the adapter's rank; default 4.
	Rank int
}

// Adapter returns a LoRA adapter for Model with the same number of
// layers: low-rank updates of every block's query and value projections,
// strong enough to change what the model says.
func Adapter(opts AdapterOptions) (*File, error) {
	if opts.Seed == 0 {
		opts.Seed = 7
	}
	if opts.Layers == 0 {
		opts.Layers = 2
	}
	if opts.Rank == 0 {
		opts.Rank = 4
	}
	if opts.Layers < 1 || opts.Layers > 32 || opts.Rank < 1 || opts.Rank > embedding {
		return nil, fmt.Errorf("tinygguf: want 1-32 layers and a rank of 1-%d: %+v", embedding, opts)
	}
	rng := rand.New(rand.NewPCG(opts.Seed, 0x6c6f7261)) // "lora"
	r := uint64(opts.Rank)
	normal := func(n uint64, std float64) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = float32(rng.NormFloat64() * std)
		}
		return out
	}
	f := &File{KV: []KV{
		{"general.architecture", "llama"},
		{"general.type", "adapter"},
		{"general.name", "modelport-tiny-lora"},
		{"adapter.type", "lora"},
		{"adapter.lora.alpha", float32(opts.Rank)},
	}}
	for l := range opts.Layers {
		for _, m := range []struct {
			name string
			out  uint64
		}{{"attn_q", embedding}, {"attn_v", kvHeads * headDim}} {
			name := fmt.Sprintf("blk.%d.%s.weight", l, m.name)
			// A is {in, r}, B is {r, out}: the update is B·A.
			f.Tensors = append(f.Tensors,
				Tensor{Name: name + ".lora_a", Shape: []uint64{embedding, r}, Data: normal(embedding*r, 1/math.Sqrt(embedding))},
				Tensor{Name: name + ".lora_b", Shape: []uint64{r, m.out}, Data: normal(r*m.out, 2/math.Sqrt(float64(r)))},
			)
		}
	}
	return f, nil
}
