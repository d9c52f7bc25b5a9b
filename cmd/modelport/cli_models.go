package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// apiModel is a model as the control API shows it.
type apiModel struct {
	Name           string         `json:"name"`
	DisplayName    string         `json:"display_name"`
	Owner          string         `json:"owner"`
	Source         string         `json:"source"`
	Format         string         `json:"format"`
	Engine         string         `json:"engine"`
	Tasks          []string       `json:"tasks"`
	GPUs           int            `json:"gpus"`
	ContextLength  int            `json:"context_length"`
	MemoryGiB      int            `json:"memory_gib"`
	Base           string         `json:"base"`
	Adapter        string         `json:"adapter"`
	MemoryBytes    int64          `json:"memory_bytes"`
	GPUMemoryBytes int64          `json:"gpu_memory_bytes"`
	Inspection     *apiInspection `json:"inspection"`
	CreatedAt      time.Time      `json:"created_at"`
}

// apiInspection is what the deployer read in a model's files.
type apiInspection struct {
	Format           string         `json:"format"`
	Architecture     string         `json:"architecture"`
	ModelName        string         `json:"model_name"`
	Parameters       int64          `json:"parameters"`
	Quantization     string         `json:"quantization"`
	ContextLength    int            `json:"context_length"`
	Layers           int            `json:"layers"`
	TensorBytes      int64          `json:"tensor_bytes"`
	FileBytes        int64          `json:"file_bytes"`
	EstimatedContext int            `json:"estimated_context"`
	MemoryBytes      int64          `json:"memory_bytes"`
	GPUMemoryBytes   int64          `json:"gpu_memory_bytes"`
	Adapter          *apiInspection `json:"adapter"`
}

const modelsSynopsis = "add NAME --source URI [flags] | ls | get NAME | rm NAME"

func runModels(ctx context.Context, c *cli, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintf(c.stderr, "usage: modelport models %s\n", modelsSynopsis)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return nil
		}
		return errors.New("models: want a subcommand: add, ls, get or rm")
	}
	switch args[0] {
	case "add", "register":
		return runModelsAdd(ctx, c, args[1:])
	case "ls", "list":
		return runModelsList(ctx, c, args[1:])
	case "get", "show":
		return runModelsGet(ctx, c, args[1:])
	case "rm", "delete":
		return runModelsRemove(ctx, c, args[1:])
	default:
		return fmt.Errorf("models: unknown subcommand %q: want add, ls, get or rm", args[0])
	}
}

func runModelsAdd(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("models add", "NAME --source URI | --base MODEL --adapter URI [flags]", true)
	source := fs.String("source", "", "where the weights are: file:///abs/path, hf://org/repo[@revision][/file.gguf], ollama://name:tag or s3://bucket/key")
	engine := fs.String("engine", "", "vllm, llama.cpp, sglang, ollama or simulator (default: from the weights' format)")
	var tasks stringsFlag
	fs.Var(&tasks, "task", "a task it serves (repeat for more; default: text-generation)")
	gpus := fs.Int("gpus", -1, "GPUs per instance (default: 0 for GGUF and Ollama models, 1 for safetensors)")
	contextLength := fs.Int("context-length", 0, "longest sequence in tokens (default: the trained context, at most 8192)")
	memory := fs.Int("memory-gib", 0, "memory an instance needs, overriding the estimate")
	base := fs.String("base", "", "fine-tuned: the model the adapter was trained on")
	adapter := fs.String("adapter", "", "fine-tuned: the LoRA adapter's source URI")
	display := fs.String("display-name", "", "a name for people")
	public := fs.Bool("public", false, "register it for everyone (admins only)")
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if *source == "" && *base == "" {
		return errors.New("models add: give --source URI, or --base MODEL and --adapter URI for a fine-tune")
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	req := map[string]any{"name": pos[0]}
	for k, v := range map[string]string{"source": *source, "engine": *engine, "base": *base, "adapter": *adapter, "display_name": *display} {
		if v != "" {
			req[k] = v
		}
	}
	if len(tasks) > 0 {
		req["tasks"] = []string(tasks)
	}
	if *gpus >= 0 {
		req["gpus"] = *gpus
	}
	if *contextLength != 0 {
		req["context_length"] = *contextLength
	}
	if *memory != 0 {
		req["memory_gib"] = *memory
	}
	if *public {
		req["public"] = true
	}
	var m apiModel
	raw, _, err := a.do(ctx, http.MethodPost, "/api/v1/models", req, &m)
	if err != nil {
		return fmt.Errorf("register model %s: %w", pos[0], err)
	}
	if c.json() {
		return c.printJSON(raw)
	}
	fmt.Fprintf(c.stderr, "Registered model %s. Deploy it with: modelport deploy NAME --model %s\n", m.Name, m.Name)
	return c.printModel(m)
}

func runModelsList(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("models ls", "", true)
	if _, err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	var list []apiModel
	raw, _, err := a.do(ctx, http.MethodGet, "/api/v1/models", nil, &list)
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(raw)
	}
	tw := c.table()
	fmt.Fprintln(tw, "NAME\tOWNER\tENGINE\tFORMAT\tTASKS\tGPUS\tCONTEXT\tMEMORY\tSOURCE")
	for _, m := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", m.Name, m.Owner, m.Engine, firstOf(m.Format, "-"),
			strings.Join(m.Tasks, ","), m.GPUs, m.ContextLength, m.need(), sourceOf(m))
	}
	return tw.Flush()
}

func runModelsGet(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("models get", "NAME", true)
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	var m apiModel
	raw, _, err := a.do(ctx, http.MethodGet, "/api/v1/models/"+url.PathEscape(pos[0]), nil, &m)
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(raw)
	}
	return c.printModel(m)
}

func runModelsRemove(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("models rm", "NAME", true)
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	if _, _, err := a.do(ctx, http.MethodDelete, "/api/v1/models/"+url.PathEscape(pos[0]), nil, nil); err != nil {
		return fmt.Errorf("delete model %s: %w", pos[0], err)
	}
	if c.json() {
		return c.printValue(map[string]any{"name": pos[0], "deleted": true})
	}
	fmt.Fprintf(c.stdout, "Deleted model %s.\n", pos[0])
	return nil
}

// printModel shows one model and what its inspection found.
func (c *cli) printModel(m apiModel) error {
	tw := c.table()
	rows := [][2]string{
		{"Name", m.Name},
		{"Display name", m.DisplayName},
		{"Owner", m.Owner},
		{"Source", m.Source},
		{"Format", firstOf(m.Format, "-")},
		{"Engine", m.Engine},
		{"Tasks", strings.Join(m.Tasks, ", ")},
		{"GPUs", strconv.Itoa(m.GPUs)},
		{"Context length", contextText(m.ContextLength)},
		{"Memory", m.need()},
	}
	if m.Base != "" {
		rows = append(rows, [2]string{"Base model", m.Base}, [2]string{"Adapter", m.Adapter})
	}
	if i := m.Inspection; i != nil && i.Format != "" {
		rows = append(rows,
			[2]string{"Architecture", firstOf(i.Architecture, "-")},
			[2]string{"Parameters", params(i.Parameters)},
			[2]string{"Quantization", firstOf(i.Quantization, "-")},
			[2]string{"Trained context", contextText(i.ContextLength)},
			[2]string{"Layers", strconv.Itoa(i.Layers)},
			[2]string{"Weights", bytesText(i.TensorBytes)},
			[2]string{"Estimated memory", fmt.Sprintf("%s on CPUs, %s on GPUs, at %s of context", bytesText(i.MemoryBytes), bytesText(i.GPUMemoryBytes), contextText(i.EstimatedContext))},
		)
	}
	if i := m.Inspection; i != nil && i.Adapter != nil {
		rows = append(rows, [2]string{"Adapter weights", bytesText(i.Adapter.TensorBytes)})
	}
	if !m.CreatedAt.IsZero() {
		rows = append(rows, [2]string{"Registered", localTime(m.CreatedAt)})
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

// need is what the scaler reserves for an instance, in words.
func (m apiModel) need() string {
	switch {
	case m.MemoryBytes > 0:
		return bytesText(m.MemoryBytes)
	case m.GPUMemoryBytes > 0:
		return bytesText(m.GPUMemoryBytes) + " GPU"
	}
	return "-"
}

// sourceOf is a model's source for the table; a fine-tune names its base.
func sourceOf(m apiModel) string {
	if m.Base != "" {
		return m.Base + " + " + m.Adapter
	}
	return m.Source
}

func contextText(n int) string {
	if n == 0 {
		return "engine default"
	}
	return strconv.Itoa(n) + " tokens"
}

func bytesText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func params(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2f B", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f M", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f K", float64(n)/1e3)
	}
	return strconv.FormatInt(n, 10)
}
