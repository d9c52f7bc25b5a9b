package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/modelport/modelport/libs/config"
	"github.com/modelport/modelport/services/inference-worker/internal/simulator"
)

// launch is what a command line asks the simulator to serve.
type launch struct {
	engine string // the command impersonated, or "modelport-simulator"
	addr   string // host:port to listen on
	cfg    simulator.Config
	extra  []simulator.Model // names served beside cfg.ServedName
}

// parse reads args, whose first element is the command's base name,
// on top of the settings from the environment. It returns nil, nil when
// only help was asked for.
func parse(args []string, env settings, getenv config.Getenv, stdout, stderr io.Writer) (*launch, error) {
	l := &launch{engine: args[0], cfg: env.cfg}
	var err error
	switch args[0] {
	case "vllm":
		err = l.vllm(args[1:])
	case "llama-server":
		err = l.llamaServer(args[1:])
	case "python3", "python":
		err = l.sglang(args[1:])
	case "ollama":
		err = l.ollama(args[1:], getenv)
	default:
		l.engine = "modelport-simulator"
		return l.own(args[1:], stderr)
	}
	if err != nil {
		return nil, err
	}
	return l, nil
}

// own reads the simulator's own flags.
func (l *launch) own(args []string, stderr io.Writer) (*launch, error) {
	fs := flag.NewFlagSet("modelport-simulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	host := fs.String("host", "127.0.0.1", "address to listen on")
	port := fs.Int("port", 8000, "port to listen on; 0 picks a free one")
	c := &l.cfg
	fs.StringVar(&c.ServedName, "served-model-name", "", "the model name to answer to (required)")
	fs.StringVar(&c.BaseModel, "model", "", "the base model named in answers (default the served name)")
	fs.DurationVar(&c.TimeToFirstToken, "ttft", c.TimeToFirstToken, "time to the first token")
	fs.DurationVar(&c.InterTokenLatency, "itl", c.InterTokenLatency, "time between tokens")
	fs.IntVar(&c.PrefixCacheTokens, "prefix-cache", c.PrefixCacheTokens, "prefix cache capacity in tokens; 0 caches nothing")
	fs.DurationVar(&c.PrefillPerToken, "prefill", c.PrefillPerToken, "time per prompt token not in the prefix cache")
	fs.IntVar(&c.MaxConcurrent, "max-concurrent", c.MaxConcurrent, "requests answered at once; 0 is unlimited")
	fs.IntVar(&c.MaxQueue, "max-queue", c.MaxQueue, "requests that may wait for a slot; more get 429")
	fs.Float64Var(&c.ErrorRate, "error-rate", c.ErrorRate, "share of requests, 0 to 1, that fail with 500")
	fs.IntVar(&c.CrashAfterTokens, "crash-after-tokens", c.CrashAfterTokens, "cut every answer this many tokens in; 0 never")
	fs.DurationVar(&c.SlowStart, "slow-start", c.SlowStart, "how long health answers 503 after start")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed of the error-rate draws")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil
		}
		return nil, &exitError{code: 2} // the flag package has said why
	}
	if fs.NArg() > 0 {
		return nil, usage("unexpected arguments %q", fs.Args())
	}
	if c.ServedName == "" {
		return nil, usage("--served-model-name is required")
	}
	if c.BaseModel == "" {
		c.BaseModel = c.ServedName
	}
	l.addr = net.JoinHostPort(*host, strconv.Itoa(*port))
	return l, nil
}

// vllm reads "serve MODEL [options]". --served-model-name and
// --lora-modules take several values, as vLLM's do.
func (l *launch) vllm(args []string) error {
	if len(args) == 0 || args[0] != "serve" {
		return usage("as vllm, the simulator runs only: vllm serve MODEL [options]")
	}
	var model, host, port string
	var names, loras []string
	rest, err := scanArgs(args[1:], options{
		values: map[string]*string{"--host": &host, "--port": &port, "--model": &model},
		lists:  map[string]*[]string{"--served-model-name": &names, "--lora-modules": &loras},
		bools:  []string{"--enable-lora", "--trust-remote-code", "--enforce-eager", "--disable-log-requests", "--enable-prefix-caching"},
	})
	if err != nil {
		return usage("vllm serve: %v", err)
	}
	if len(rest) > 0 {
		model = rest[0]
	}
	if model == "" {
		return usage("vllm serve: a model is required")
	}
	l.cfg.BaseModel = model
	l.cfg.ServedName = model
	if len(names) > 0 {
		l.cfg.ServedName = names[0]
		for _, n := range names[1:] {
			l.extra = append(l.extra, simulator.Model{Name: n, BaseModel: model})
		}
	}
	for _, lora := range loras {
		name, err := loraName(lora)
		if err != nil {
			return usage("vllm serve: --lora-modules: %v", err)
		}
		l.extra = append(l.extra, simulator.Model{Name: name, BaseModel: model})
	}
	return l.listenOn(host, port, "8000")
}

// loraName is the name in a --lora-modules value: NAME=PATH, or JSON with
// a "name".
func loraName(v string) (string, error) {
	if strings.HasPrefix(v, "{") {
		var m struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal([]byte(v), &m); err != nil || m.Name == "" {
			return "", fmt.Errorf("%q has no name", v)
		}
		return m.Name, nil
	}
	name, _, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return "", fmt.Errorf("%q is not NAME=PATH", v)
	}
	return name, nil
}

// llamaServer reads llama.cpp's server options.
func (l *launch) llamaServer(args []string) error {
	var model, alias, host, port string
	rest, err := scanArgs(args, options{values: map[string]*string{
		"-m": &model, "--model": &model, "-a": &alias, "--alias": &alias, "--host": &host, "--port": &port,
	}})
	if err != nil {
		return usage("llama-server: %v", err)
	}
	if len(rest) > 0 {
		return usage("llama-server: unexpected arguments %q", rest)
	}
	if model == "" {
		return usage("llama-server: -m MODEL_PATH is required")
	}
	l.cfg.BaseModel = filepath.Base(model)
	l.cfg.ServedName = alias
	if alias == "" {
		l.cfg.ServedName = filepath.Base(model)
	}
	return l.listenOn(host, port, "8080")
}

// sglang reads "-m sglang.launch_server [options]".
func (l *launch) sglang(args []string) error {
	if len(args) < 2 || args[0] != "-m" || args[1] != "sglang.launch_server" {
		return usage("as python3, the simulator runs only: python3 -m sglang.launch_server --model-path PATH [options]")
	}
	l.engine = "sglang"
	var model, name, host, port string
	rest, err := scanArgs(args[2:], options{values: map[string]*string{
		"--model-path": &model, "--model": &model, "--served-model-name": &name, "--host": &host, "--port": &port,
	}})
	if err != nil {
		return usage("sglang.launch_server: %v", err)
	}
	if len(rest) > 0 {
		return usage("sglang.launch_server: unexpected arguments %q", rest)
	}
	if model == "" {
		return usage("sglang.launch_server: --model-path is required")
	}
	l.cfg.BaseModel = model
	l.cfg.ServedName = name
	if name == "" {
		l.cfg.ServedName = model
	}
	return l.listenOn(host, port, "30000")
}

// ollama reads "serve"; the address comes from OLLAMA_HOST. It serves no
// model until one is pulled.
func (l *launch) ollama(args []string, getenv config.Getenv) error {
	if len(args) != 1 || args[0] != "serve" {
		return usage("as ollama, the simulator runs only: ollama serve")
	}
	addr, err := ollamaAddr(getenv("OLLAMA_HOST"))
	if err != nil {
		return usage("OLLAMA_HOST: %v", err)
	}
	l.addr = addr
	return nil
}

// ollamaAddr reads OLLAMA_HOST as Ollama does: [scheme://]host[:port],
// 127.0.0.1:11434 by default.
func ollamaAddr(v string) (string, error) {
	v = strings.TrimSpace(v)
	if _, after, ok := strings.Cut(v, "://"); ok {
		v = after
	}
	v = strings.TrimSuffix(v, "/")
	host, port := v, "11434"
	if h, p, err := net.SplitHostPort(v); err == nil {
		host, port = h, p
	}
	if host == "" {
		host = "127.0.0.1"
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("%q has no valid port", v)
	}
	return net.JoinHostPort(host, port), nil
}

// listenOn sets the address from an engine's --host and --port.
func (l *launch) listenOn(host, port, defaultPort string) error {
	if host == "" {
		host = "127.0.0.1"
	}
	if port == "" {
		port = defaultPort
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return usage("%s: --port %q is not a port", l.engine, port)
	}
	l.addr = net.JoinHostPort(host, port)
	return nil
}

// describe says what the instance serves, for its first line of output.
func (l *launch) describe(sim *simulator.Server) string {
	if l.engine == "ollama" {
		return "serving each model pulled or copied"
	}
	var names []string
	for _, m := range sim.Models() {
		names = append(names, strconv.Quote(m.Name))
	}
	return fmt.Sprintf("serving %s, simulating %q", strings.Join(names, ", "), l.cfg.BaseModel)
}

// routes is the HTTP API the impersonated engine has.
func (l *launch) routes(sim *simulator.Server) http.Handler {
	switch l.engine {
	case "llama-server":
		mux := http.NewServeMux()
		mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
			if !sim.Ready() {
				writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "loading model"})
				return
			}
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		})
		mux.Handle("/", sim)
		return mux
	case "sglang":
		mux := http.NewServeMux()
		mux.HandleFunc("GET /health_generate", func(w http.ResponseWriter, r *http.Request) {
			r.URL.Path = "/health"
			sim.ServeHTTP(w, r)
		})
		mux.HandleFunc("GET /get_model_info", func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, map[string]any{"model_path": l.cfg.BaseModel, "is_generation": true, "simulated": true})
		})
		mux.Handle("/", sim)
		return mux
	case "ollama":
		return newOllama(sim).routes()
	default:
		return sim
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// options says how scanArgs reads the options it knows.
type options struct {
	values map[string]*string   // take one value: "--name v" or "--name=v"
	lists  map[string]*[]string // take every value up to the next option
	bools  []string             // take none
}

// scanArgs reads args the way the engines' parsers do for the options in
// opts and returns the positional arguments. Any other option is skipped
// with the argument after it, when there is one that is not an option
// itself: "--unknown v" is a pair, "--unknown --next" is not.
func scanArgs(args []string, opts options) ([]string, error) {
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(rest, args[i+1:]...), nil
		}
		if !isOption(a) {
			rest = append(rest, a)
			continue
		}
		name, value, inline := strings.Cut(a, "=")
		next := i+1 < len(args) && !isOption(args[i+1])
		switch {
		case opts.values[name] != nil:
			switch {
			case inline:
			case i+1 < len(args):
				i++
				value = args[i]
			default:
				return nil, fmt.Errorf("%s needs a value", name)
			}
			*opts.values[name] = value
		case opts.lists[name] != nil:
			list := opts.lists[name]
			if inline {
				*list = append(*list, value)
				continue
			}
			if !next {
				return nil, fmt.Errorf("%s needs a value", name)
			}
			for i+1 < len(args) && !isOption(args[i+1]) {
				i++
				*list = append(*list, args[i])
			}
		case slices.Contains(opts.bools, name):
		case !inline && next:
			i++ // an unknown option's value
		}
	}
	return rest, nil
}

// isOption reports whether a starts an option: a dash and more, that is
// not a negative number.
func isOption(a string) bool {
	if len(a) < 2 || a[0] != '-' {
		return false
	}
	_, err := strconv.ParseFloat(a, 64)
	return err != nil
}
