package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/modelport/modelport/libs/state"
	"golang.org/x/term"
)

// chatUsage is the token count an answer ends with.
type chatUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func (u chatUsage) String() string {
	return fmt.Sprintf("usage: %d prompt + %d completion = %d tokens", u.PromptTokens, u.CompletionTokens, u.TotalTokens)
}

// chatError is an error object inside a stream or an answer.
type chatError struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	Param   string `json:"param"`
}

func runChat(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("chat", `NAME|ACCESS_NAME ["PROMPT"|-] [--system S] [--temperature T] [--max-tokens N] [--no-stream]`, true)
	system := fs.String("system", "", "a system message sent before the prompt")
	temperature := fs.Float64("temperature", 1, "sampling temperature, 0 to 2 (sent only when given)")
	maxTokens := fs.Int("max-tokens", 0, "the most tokens to generate (sent only when given)")
	noStream := fs.Bool("no-stream", false, "wait for the whole answer instead of streaming it")
	pos, err := c.parse(fs, args, 1, 2)
	if err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	prompt := ""
	if len(pos) == 2 && pos[1] != "-" {
		prompt = pos[1]
	} else {
		if f, ok := c.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			fmt.Fprintln(c.stderr, "Type the prompt; end it with Ctrl-D on a line of its own.")
		}
		b, err := io.ReadAll(c.stdin)
		if err != nil {
			return fmt.Errorf("read the prompt: %w", err)
		}
		prompt = strings.TrimSpace(string(b))
	}
	if prompt == "" {
		return errors.New(`chat: no prompt: give it after the service ("modelport chat NAME \"hello\"") or on stdin`)
	}

	a, err := c.client()
	if err != nil {
		return err
	}
	model := pos[0]
	if !strings.Contains(model, "/") {
		s, _, err := resolveService(ctx, a, model)
		if err != nil {
			return err
		}
		if s.Task != state.TaskTextGeneration && s.Task != state.TaskImageUnderstanding {
			return fmt.Errorf("chat: service %s serves %s; chat needs a text-generation or image-understanding service", s.Name, s.Task)
		}
		model = s.AccessName
	}

	var messages []map[string]string
	if *system != "" {
		messages = append(messages, map[string]string{"role": "system", "content": *system})
	}
	messages = append(messages, map[string]string{"role": "user", "content": prompt})
	body := map[string]any{"model": model, "messages": messages}
	if set["temperature"] {
		body["temperature"] = *temperature
	}
	if set["max-tokens"] {
		body["max_tokens"] = *maxTokens
	}
	if !*noStream {
		body["stream"] = true
		body["stream_options"] = map[string]bool{"include_usage": true}
	}
	// No timeout but the caller's: an answer may take long.
	req, err := a.request(ctx, http.MethodPost, "/v1/chat/completions", body)
	if err != nil {
		return err
	}
	resp, err := a.send(req)
	if err != nil {
		return fmt.Errorf("chat with %s: %w", model, err)
	}
	defer resp.Body.Close()
	if *noStream {
		return c.chatAnswer(resp.Body)
	}
	return c.chatStream(resp.Body)
}

// chatAnswer prints a whole chat completion, its usage on stderr.
func (c *cli) chatAnswer(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("read the answer: %w", err)
	}
	var ans struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
		Usage *chatUsage `json:"usage"`
	}
	if err := json.Unmarshal(raw, &ans); err != nil {
		return fmt.Errorf("the answer is not a chat completion: %w", err)
	}
	if c.json() {
		if err := c.printJSON(raw); err != nil {
			return err
		}
	} else {
		for _, ch := range ans.Choices {
			text := ch.Message.Content
			if !strings.HasSuffix(text, "\n") {
				text += "\n"
			}
			if _, err := io.WriteString(c.stdout, text); err != nil {
				return err
			}
		}
	}
	if ans.Usage != nil {
		fmt.Fprintln(c.stderr, ans.Usage)
	}
	return nil
}

// chatStream prints a streamed chat completion as it arrives: each token
// as it comes (--output json: each chunk, one a line), the usage on
// stderr at the end.
func (c *cli) chatStream(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 8<<20)
	var (
		usage   *chatUsage
		endLine = true // whether the text so far ends a line
		done    bool
	)
	for sc.Scan() {
		data, ok := bytes.CutPrefix(sc.Bytes(), []byte("data:"))
		if !ok {
			continue // blank lines between events, comments, other fields
		}
		data = bytes.TrimSpace(data)
		if string(data) == "[DONE]" {
			done = true
			break
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Usage *chatUsage `json:"usage"`
			Error *chatError `json:"error"`
		}
		if err := json.Unmarshal(data, &chunk); err != nil {
			return fmt.Errorf("the stream sent something that is not a chunk: %w", err)
		}
		if chunk.Error != nil {
			if !endLine {
				fmt.Fprintln(c.stdout)
			}
			return &apiError{Message: "the answer broke off: " + chunk.Error.Message, Type: chunk.Error.Type, Param: chunk.Error.Param}
		}
		if chunk.Usage != nil {
			usage = chunk.Usage
		}
		if c.json() {
			if _, err := fmt.Fprintf(c.stdout, "%s\n", data); err != nil {
				return err
			}
			continue
		}
		for _, ch := range chunk.Choices {
			if ch.Delta.Content == "" {
				continue
			}
			if _, err := io.WriteString(c.stdout, ch.Delta.Content); err != nil {
				return err
			}
			endLine = strings.HasSuffix(ch.Delta.Content, "\n")
		}
	}
	if !endLine {
		fmt.Fprintln(c.stdout)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read the stream: %w", err)
	}
	if !done {
		return errors.New("the stream ended before the answer was complete")
	}
	if usage != nil {
		fmt.Fprintln(c.stderr, usage)
	}
	return nil
}
