package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/modelport/modelport/libs/config"
)

// cliCommands are the client commands of the modelport binary: they talk
// to a running platform over its HTTP APIs (events tail: over NATS).
var cliCommands = map[string]func(ctx context.Context, c *cli, args []string) error{
	"login":   runLogin,
	"catalog": runCatalog,
	"deploy":  runDeploy,
	"ls":      runList,
	"get":     runGet,
	"scale":   runScale,
	"routing": runRouting,
	"delete":  runDelete,
	"keys":    runKeys,
	"models":  runModels,
	"usage":   runUsage,
	"chat":    runChat,
	"events":  runEvents,
	"nats":    runNATS,
}

// runCLI runs a client command. stdin answers prompts (the API key at
// login, the service's name at delete).
func runCLI(ctx context.Context, args []string, getenv config.Getenv, stdin io.Reader, stdout, stderr io.Writer) error {
	cmd, ok := cliCommands[args[0]]
	if !ok {
		return fmt.Errorf("unknown command %q", args[0])
	}
	c := &cli{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	if err := cmd(ctx, c, args[1:]); !errors.Is(err, flag.ErrHelp) {
		return err
	}
	return nil
}

// cli is what a client command works with: its streams, the environment,
// and the global flags --url, --key and --output.
type cli struct {
	getenv config.Getenv
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer

	url    string
	key    string
	output string
}

// flags returns a flag set for the command with the global flags;
// withAPI adds --url and --key.
func (c *cli) flags(name, synopsis string, withAPI bool) *flag.FlagSet {
	fs := flag.NewFlagSet("modelport "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	if withAPI {
		fs.StringVar(&c.url, "url", "", "the platform's URL (default: $MODELPORT_URL, then the saved login)")
		fs.StringVar(&c.key, "key", "", "API key (default: $MODELPORT_API_KEY, then the saved login)")
	}
	fs.StringVar(&c.output, "output", "table", "output format: table or json")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: modelport %s %s\n\nflags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args, flags and positional arguments in any order (after
// "--" everything is positional), and checks that between min and max
// positional arguments came.
func (c *cli) parse(fs *flag.FlagSet, args []string, min, max int) ([]string, error) {
	var rest []string
	for i, a := range args {
		if a == "--" {
			args, rest = args[:i], args[i+1:]
			break
		}
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	pos = append(pos, rest...)
	if c.output != "table" && c.output != "json" {
		return nil, fmt.Errorf("--output %q: want table or json", c.output)
	}
	if len(pos) < min || len(pos) > max {
		fs.Usage()
		want := fmt.Sprintf("%d", min)
		switch {
		case max > min && max < 1<<20:
			want = fmt.Sprintf("%d to %d", min, max)
		case max > min:
			want = fmt.Sprintf("at least %d", min)
		}
		return nil, fmt.Errorf("%s: want %s argument(s), got %d", fs.Name(), want, len(pos))
	}
	return pos, nil
}

func (c *cli) json() bool { return c.output == "json" }

// printJSON writes a JSON document indented, as the API sent it.
func (c *cli) printJSON(raw []byte) error {
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "  "); err != nil {
		return fmt.Errorf("the answer is not JSON: %w", err)
	}
	b.WriteByte('\n')
	_, err := c.stdout.Write(b.Bytes())
	return err
}

// printValue writes v as indented JSON.
func (c *cli) printValue(v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return c.printJSON(raw)
}

// table returns a writer that aligns tab-separated columns; Flush it.
func (c *cli) table() *tabwriter.Writer {
	return tabwriter.NewWriter(c.stdout, 0, 0, 3, ' ', 0)
}

// cliConfig is what login saves.
type cliConfig struct {
	URL string `json:"url"`
	Key string `json:"api_key"`
}

// configPath is where login saves: $MODELPORT_CONFIG, else
// $XDG_CONFIG_HOME/modelport/config.json, else
// ~/.config/modelport/config.json.
func configPath(getenv config.Getenv) (string, error) {
	if p := getenv("MODELPORT_CONFIG"); p != "" {
		return p, nil
	}
	if d := getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "modelport", "config.json"), nil
	}
	home := getenv("HOME")
	if home == "" {
		var err error
		if home, err = os.UserHomeDir(); err != nil {
			return "", fmt.Errorf("where to keep the login: %w (set MODELPORT_CONFIG)", err)
		}
	}
	return filepath.Join(home, ".config", "modelport", "config.json"), nil
}

// loadConfig reads the saved login; a missing file is an empty one.
func loadConfig(path string) (cliConfig, error) {
	var cfg cliConfig
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("read the login: %w", err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return cfg, fmt.Errorf("read the login in %s: %w (log in again to rewrite it)", path, err)
	}
	return cfg, nil
}

// saveConfig writes the login readable by its owner only, replacing the
// file whole so a reader never sees half of it.
func saveConfig(path string, cfg cliConfig) error {
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save the login: %w", err)
	}
	f, err := os.CreateTemp(dir, ".config-*.json") // mode 0600
	if err != nil {
		return fmt.Errorf("save the login: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("save the login: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save the login: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("save the login: %w", err)
	}
	return nil
}

// errNotLoggedIn says how to tell the CLI where the platform is.
var errNotLoggedIn = errors.New(`not logged in: run "modelport login --url http://HOST:PORT" and give it an API key ` +
	`(or set MODELPORT_URL and MODELPORT_API_KEY, or pass --url and --key)`)

// client returns an API client for the URL and key from the flags, else
// the environment, else the saved login.
func (c *cli) client() (*apiClient, error) {
	path, err := configPath(c.getenv)
	if err != nil {
		return nil, err
	}
	cfg, err := loadConfig(path)
	if err != nil {
		return nil, err
	}
	url := firstOf(c.url, c.getenv("MODELPORT_URL"), cfg.URL)
	key := firstOf(c.key, c.getenv("MODELPORT_API_KEY"), cfg.Key)
	if url == "" || key == "" {
		return nil, errNotLoggedIn
	}
	return newAPIClient(url, key), nil
}

func firstOf(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// apiClient calls the control, usage and OpenAI APIs with one key.
type apiClient struct {
	base string // scheme://host:port, without /v1 or /api/v1
	key  string
	hc   *http.Client
}

// newAPIClient accepts the URL as the platform prints it, with or without
// /v1 or /api/v1.
func newAPIClient(url, key string) *apiClient {
	return &apiClient{base: baseURL(url), key: strings.TrimSpace(key), hc: &http.Client{}}
}

func baseURL(url string) string {
	url = strings.TrimRight(strings.TrimSpace(url), "/")
	for _, suffix := range []string{"/api/v1", "/v1"} {
		url = strings.TrimSuffix(url, suffix)
	}
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	return url
}

// callTimeout bounds every call but a chat.
const callTimeout = 30 * time.Second

// apiError is an OpenAI-style error answer.
type apiError struct {
	Status  int
	Message string
	Type    string
	Param   string
	Code    string
}

func (e *apiError) Error() string {
	msg := e.Message
	if e.Param != "" {
		msg += " (param: " + e.Param + ")"
	}
	switch e.Status {
	case http.StatusUnauthorized:
		msg += "\nThe API key was refused: it may be mistyped or revoked. Log in again with \"modelport login\", or pass --key."
	case http.StatusForbidden:
		msg += "\nThis API key may not do that: use an unrestricted key of the service's owner, or an admin key."
	}
	return msg
}

// errorOf reads an error answer; one that is not an OpenAI error object
// (a proxy's, say) is described by its status and start.
func errorOf(status int, body []byte) *apiError {
	var eb struct {
		Error struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
			Code    *string `json:"code"`
		} `json:"error"`
	}
	e := &apiError{Status: status}
	if json.Unmarshal(body, &eb) == nil && eb.Error.Message != "" {
		e.Message, e.Type = eb.Error.Message, eb.Error.Type
		if eb.Error.Param != nil {
			e.Param = *eb.Error.Param
		}
		if eb.Error.Code != nil {
			e.Code = *eb.Error.Code
		}
		return e
	}
	text := strings.TrimSpace(string(body))
	if len(text) > 200 {
		text = text[:200] + "…"
	}
	e.Message = fmt.Sprintf("HTTP %d %s", status, http.StatusText(status))
	if text != "" {
		e.Message += ": " + text
	}
	return e
}

// isStatus reports whether err is an API error with the given status.
func isStatus(err error, status int) bool {
	var e *apiError
	return errors.As(err, &e) && e.Status == status
}

// request builds a request with the key and, when body is not nil, JSON.
func (a *apiClient) request(ctx context.Context, method, path string, body any) (*http.Request, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, r)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

// send sends req and returns the response, or the error of an answer
// that is not 2xx.
func (a *apiClient) send(req *http.Request) (*http.Response, error) {
	resp, err := a.hc.Do(req)
	if err != nil {
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, ctxErr)
		}
		return nil, fmt.Errorf("cannot reach Modelport at %s: %w\nIs it running (modelport up)? Is the URL right?", a.base, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, errorOf(resp.StatusCode, b)
	}
	return resp, nil
}

// do sends a JSON request and returns the raw answer and its headers;
// when out is not nil the answer is decoded into it.
func (a *apiClient) do(ctx context.Context, method, path string, body, out any) ([]byte, http.Header, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	req, err := a.request(ctx, method, path, body)
	if err != nil {
		return nil, nil, err
	}
	resp, err := a.send(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: read the answer: %w", method, path, err)
	}
	if out != nil && len(bytes.TrimSpace(raw)) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return nil, nil, fmt.Errorf("%s %s: unexpected answer: %w", method, path, err)
		}
	}
	return raw, resp.Header, nil
}

// nextLink returns the target of a Link header's rel="next", or "".
func nextLink(h http.Header) string {
	for _, link := range h.Values("Link") {
		for _, part := range strings.Split(link, ",") {
			target, params, ok := strings.Cut(strings.TrimSpace(part), ";")
			if ok && strings.Contains(params, `rel="next"`) {
				return strings.Trim(strings.TrimSpace(target), "<>")
			}
		}
	}
	return ""
}

// localTime formats a time for tables.
func localTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// stringsFlag is a flag that may be given more than once.
type stringsFlag []string

func (s *stringsFlag) String() string { return strings.Join(*s, ",") }

func (s *stringsFlag) Set(v string) error {
	*s = append(*s, v)
	return nil
}
