package gateway_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/modelport/modelport/libs/auth"
	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/services/router/internal/gateway"
)

const imagesBaseURL = "https://router.example"

// fakeSaver keeps the images it is given and links them under the base
// URL by their number, or fails with err.
type fakeSaver struct {
	mu    sync.Mutex
	saved [][]byte
	bases []string
	err   error
}

var _ gateway.ImageSaver = (*fakeSaver)(nil)

func (s *fakeSaver) Save(_ context.Context, png []byte, baseURL string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return "", s.err
	}
	s.saved = append(s.saved, slices.Clone(png))
	s.bases = append(s.bases, baseURL)
	return fmt.Sprintf("%s/v1/images/files/%d.png", baseURL, len(s.saved)), nil
}

func (s *fakeSaver) images() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.saved)
}

// Two images as an engine returns them.
var (
	png1 = []byte("\x89PNG\r\n\x1a\n first image")
	png2 = []byte("\x89PNG\r\n\x1a\n second image, a little longer")
	b64a = base64.StdEncoding.EncodeToString(png1)
	b64b = base64.StdEncoding.EncodeToString(png2)
)

const imageUsage = `{"input_tokens":7,"input_tokens_details":{"image_tokens":0,"text_tokens":7},"output_tokens":4160,"total_tokens":4167}`

func imagesAnswer(usage string) string {
	a := `{"created":1700000000,"data":[{"b64_json":"` + b64a + `","revised_prompt":"a red cat on a mat"},{"b64_json":"` + b64b + `"}]`
	if usage != "" {
		a += `,"usage":` + usage
	}
	return a + `}`
}

func imageBody(model, extra string) []byte {
	return []byte(`{"model":"` + model + `","prompt":"a <red> cat & a mat","n":2,"size":"1024x1024"` + extra + `}`)
}

var imgEndpoint = instance(aliceImage, "i-img").Endpoint

// generate calls GenerateImages as alice's request req-i.
func generate(f fixture, caller auth.Key, body []byte, saver gateway.ImageSaver) ([]byte, error) {
	return f.g.GenerateImages(context.Background(), gateway.Call{Caller: caller, RequestID: "req-i", Body: body}, saver, imagesBaseURL)
}

func TestGenerateImagesRejects(t *testing.T) {
	img := aliceImage.AccessName
	tests := []struct {
		name      string
		caller    auth.Key
		body      string
		wantKind  errs.Kind
		wantParam string
		wantMsg   string
	}{
		{name: "array body", caller: alice, body: `[1]`, wantKind: errs.Invalid, wantMsg: "JSON object"},
		{name: "string body", caller: alice, body: `"draw a cat"`, wantKind: errs.Invalid, wantMsg: "JSON object"},
		{name: "empty body", caller: alice, body: ``, wantKind: errs.Invalid, wantMsg: "JSON object"},
		{name: "not JSON", caller: alice, body: `{"model":`, wantKind: errs.Invalid},
		{name: "missing model", caller: alice, body: `{"prompt":"a cat"}`, wantKind: errs.Invalid, wantParam: "model"},
		{name: "empty model", caller: alice, body: `{"model":"","prompt":"a cat"}`, wantKind: errs.Invalid, wantParam: "model"},
		{name: "model a number", caller: alice, body: `{"model":7,"prompt":"a cat"}`, wantKind: errs.Invalid, wantParam: "model"},
		{name: "missing prompt", caller: alice, body: `{"model":"` + img + `"}`, wantKind: errs.Invalid, wantParam: "prompt"},
		{name: "null prompt", caller: alice, body: `{"model":"` + img + `","prompt":null}`, wantKind: errs.Invalid, wantParam: "prompt"},
		{name: "empty prompt", caller: alice, body: `{"model":"` + img + `","prompt":""}`, wantKind: errs.Invalid, wantParam: "prompt"},
		{name: "prompt a number", caller: alice, body: `{"model":"` + img + `","prompt":5}`, wantKind: errs.Invalid, wantParam: "prompt"},
		{name: "n a string", caller: alice, body: `{"model":"` + img + `","prompt":"a cat","n":"two"}`, wantKind: errs.Invalid, wantParam: "n"},
		{name: "response_format png", caller: alice, body: `{"model":"` + img + `","prompt":"a cat","response_format":"png"}`, wantKind: errs.Invalid, wantParam: "response_format"},
		{name: "response_format empty", caller: alice, body: `{"model":"` + img + `","prompt":"a cat","response_format":""}`, wantKind: errs.Invalid, wantParam: "response_format"},
		{name: "response_format a number", caller: alice, body: `{"model":"` + img + `","prompt":"a cat","response_format":1}`, wantKind: errs.Invalid, wantParam: "response_format"},
		{name: "unknown model", caller: alice, body: `{"model":"u-` + alice.OwnerID + `/nope","prompt":"a cat"}`, wantKind: errs.NotFound, wantParam: "model"},
		{name: "another owner's model", caller: bob, body: `{"model":"` + img + `","prompt":"a cat"}`, wantKind: errs.NotFound, wantParam: "model"},
		{name: "text service", caller: alice, body: `{"model":"` + aliceChat.AccessName + `","prompt":"a cat"}`, wantKind: errs.Invalid, wantParam: "model", wantMsg: "image-generation"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture()
			saver := &fakeSaver{}
			out, err := generate(f, tc.caller, []byte(tc.body), saver)
			e := checkErr(t, err, tc.wantKind, tc.wantParam)
			if !strings.Contains(e.Msg, tc.wantMsg) {
				t.Errorf("message %q does not contain %q", e.Msg, tc.wantMsg)
			}
			if out != nil {
				t.Errorf("got answer %s with the error", out)
			}
			if got := f.eng.endpoints(); len(got) != 0 {
				t.Errorf("engine called at %v, want no call", got)
			}
			if got := f.pub.published(); len(got) != 0 {
				t.Errorf("published %d events, want none", len(got))
			}
			if got := saver.images(); len(got) != 0 {
				t.Errorf("saved %d images, want none", len(got))
			}
		})
	}
}

func TestGenerateImages(t *testing.T) {
	url := func(n int) string { return fmt.Sprintf(`"%s/v1/images/files/%d.png"`, imagesBaseURL, n) }
	asB64 := []map[string]string{
		{"b64_json": `"` + b64a + `"`, "revised_prompt": `"a red cat on a mat"`},
		{"b64_json": `"` + b64b + `"`},
	}
	asURL := []map[string]string{
		{"url": url(1), "revised_prompt": `"a red cat on a mat"`},
		{"url": url(2)},
	}
	tests := []struct {
		name      string
		extra     string // the client's response_format field, if any, and others
		engine    string // the engine's usage object, if any
		wantData  []map[string]string
		wantSaved [][]byte
		wantUsage gateway.Usage
	}{
		{name: "b64_json", extra: `,"response_format":"b64_json"`, engine: imageUsage, wantData: asB64,
			wantUsage: gateway.Usage{PromptTokens: 7, CompletionTokens: 4160}},
		{name: "url", extra: `,"response_format":"url","user":"<u&1>"`, engine: imageUsage, wantData: asURL, wantSaved: [][]byte{png1, png2},
			wantUsage: gateway.Usage{PromptTokens: 7, CompletionTokens: 4160}},
		{name: "url by default", extra: `,"quality":"hd","x_extra":{"steps":[20,"<30>"]}`, engine: imageUsage, wantData: asURL, wantSaved: [][]byte{png1, png2},
			wantUsage: gateway.Usage{PromptTokens: 7, CompletionTokens: 4160}},
		{name: "url when response_format is null", extra: `,"response_format":null`, engine: imageUsage, wantData: asURL, wantSaved: [][]byte{png1, png2},
			wantUsage: gateway.Usage{PromptTokens: 7, CompletionTokens: 4160}},
		{name: "no usage from the engine", extra: `,"response_format":"b64_json"`, wantData: asB64},
		{name: "no usage from the engine, url", wantData: asURL, wantSaved: [][]byte{png1, png2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture()
			f.eng.set(imgEndpoint, answer{status: 200, body: imagesAnswer(tc.engine)})
			saver := &fakeSaver{}
			body := imageBody(aliceImage.AccessName, tc.extra)
			out, err := generate(f, alice, body, saver)
			if err != nil {
				t.Fatalf("GenerateImages: %v", err)
			}

			// The engine is asked for base64 whatever the client wants,
			// with every other field as the client sent it.
			f.eng.mu.Lock()
			calls := slices.Clone(f.eng.calls)
			f.eng.mu.Unlock()
			if len(calls) != 1 {
				t.Fatalf("engine called %d times, want 1", len(calls))
			}
			if got, want := calls[0].endpoint, imgEndpoint; got != want {
				t.Errorf("engine called at %s, want %s", got, want)
			}
			if got, want := calls[0].path, "/images/generations"; got != want {
				t.Errorf("path = %q, want %q", got, want)
			}
			up, client := fields(t, string(calls[0].body)), fields(t, string(body))
			client["response_format"] = `"b64_json"`
			if !maps.Equal(up, client) {
				t.Errorf("upstream fields =\n %v, want\n %v", up, client)
			}

			// The answer: the engine's, with the images as asked.
			got := fields(t, string(out))
			if strings.Contains(string(out), `\u00`) {
				t.Errorf("answer is HTML-escaped: %s", out)
			}
			var data []map[string]json.RawMessage
			if err := json.Unmarshal([]byte(got["data"]), &data); err != nil {
				t.Fatalf("data %s: %v", got["data"], err)
			}
			if len(data) != len(tc.wantData) {
				t.Fatalf("got %d images, want %d: %s", len(data), len(tc.wantData), got["data"])
			}
			for i, d := range data {
				g := map[string]string{}
				for k, v := range d {
					g[k] = string(v)
				}
				if !maps.Equal(g, tc.wantData[i]) {
					t.Errorf("image %d = %v, want %v", i, g, tc.wantData[i])
				}
			}
			if got, want := got["created"], "1700000000"; got != want {
				t.Errorf("created = %s, want the engine's %s", got, want)
			}
			usage, ok := got["usage"]
			switch {
			case tc.engine == "" && ok:
				t.Errorf("answer has usage %s the engine did not send", usage)
			case tc.engine != "" && usage != tc.engine:
				t.Errorf("usage = %s, want the engine's %s", usage, tc.engine)
			}
			if got, want := len(got), len(fields(t, imagesAnswer(tc.engine))); got != want {
				t.Errorf("answer has %d fields, want the engine's %d: %s", got, want, out)
			}

			saved := saver.images()
			if !slices.EqualFunc(saved, tc.wantSaved, func(a, b []byte) bool { return string(a) == string(b) }) {
				t.Errorf("saved %q, want %q", saved, tc.wantSaved)
			}
			for _, b := range saver.bases {
				if b != imagesBaseURL {
					t.Errorf("saved under %q, want %q", b, imagesBaseURL)
				}
			}

			evs := f.pub.published()
			if len(evs) != 1 {
				t.Fatalf("published %d events, want 1", len(evs))
			}
			ev, ok := evs[0].(events.RequestCompletedV1)
			if !ok {
				t.Fatalf("published %T, want events.RequestCompletedV1", evs[0])
			}
			u := tc.wantUsage
			want := events.RequestCompletedV1{
				Meta: ev.Meta, RequestID: "req-i", ServiceID: aliceImage.ID, OwnerID: alice.OwnerID,
				AccessName: aliceImage.AccessName, BaseModel: aliceImage.BaseModel, APIKeyID: alice.ID, InstanceID: "i-img",
				Endpoint: "/v1/images/generations", Status: 200,
				PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens, TotalTokens: u.PromptTokens + u.CompletionTokens,
				StartedAt: ev.StartedAt, FinishedAt: ev.FinishedAt,
			}
			if ev != want {
				t.Errorf("usage event\n %+v, want\n %+v", ev, want)
			}
		})
	}
}

func TestGenerateImagesAdminCallsAnyModel(t *testing.T) {
	f := newFixture()
	f.eng.set(imgEndpoint, answer{status: 200, body: imagesAnswer(imageUsage)})
	if _, err := generate(f, admin, imageBody(aliceImage.AccessName, ""), &fakeSaver{}); err != nil {
		t.Fatalf("admin calling alice's image model: %v", err)
	}
	evs := f.pub.published()
	if len(evs) != 1 {
		t.Fatalf("published %d events, want 1", len(evs))
	}
	if ev := evs[0].(events.RequestCompletedV1); ev.OwnerID != alice.OwnerID || ev.APIKeyID != admin.ID {
		t.Errorf("event owner %q key %q, want the service's owner %q and the admin's key %q", ev.OwnerID, ev.APIKeyID, alice.OwnerID, admin.ID)
	}
}

func TestGenerateImagesEngineErrors(t *testing.T) {
	saveErr := errors.New("object store: bucket full")
	tests := []struct {
		name      string
		format    string // the client's response_format
		answer    answer
		saveErr   error
		wantKind  errs.Kind
		wantParam string
		wantMsg   string
		wantIs    error
	}{
		{
			name:      "400 with an OpenAI error",
			answer:    answer{status: 400, body: `{"error":{"message":"size must be one of 512x512, 1024x1024","type":"invalid_request_error","param":"size","code":null}}`},
			wantKind:  errs.Invalid,
			wantParam: "size",
			wantMsg:   "size must be one of 512x512, 1024x1024",
		},
		{name: "500", answer: answer{status: 500, body: `{"error":{"message":"CUDA out of memory"}}`}, wantKind: errs.Upstream, wantMsg: "500"},
		{name: "answer without data", answer: answer{status: 200, body: `{"created":1}`}, wantKind: errs.Upstream},
		{name: "answer with empty data", answer: answer{status: 200, body: `{"created":1,"data":[]}`}, wantKind: errs.Upstream},
		{name: "answer with null data", answer: answer{status: 200, body: `{"created":1,"data":null}`}, wantKind: errs.Upstream},
		{name: "answer not JSON", answer: answer{status: 200, body: `<html>oops</html>`}, wantKind: errs.Upstream},
		{name: "image not base64", format: "url", answer: answer{status: 200, body: `{"created":1,"data":[{"b64_json":"not base64!"}]}`}, wantKind: errs.Upstream},
		{name: "image without b64_json", format: "url", answer: answer{status: 200, body: `{"created":1,"data":[{"url":"http://engine/x.png"}]}`}, wantKind: errs.Upstream},
		{name: "saver fails", format: "url", answer: answer{status: 200, body: imagesAnswer(imageUsage)}, saveErr: saveErr, wantIs: saveErr},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture()
			f.eng.set(imgEndpoint, tc.answer)
			extra := ""
			if tc.format != "" {
				extra = `,"response_format":"` + tc.format + `"`
			}
			out, err := generate(f, alice, imageBody(aliceImage.AccessName, extra), &fakeSaver{err: tc.saveErr})
			if tc.wantIs != nil {
				if !errors.Is(err, tc.wantIs) {
					t.Fatalf("err = %v, want %v", err, tc.wantIs)
				}
			} else {
				e := checkErr(t, err, tc.wantKind, tc.wantParam)
				if !strings.Contains(e.Error(), tc.wantMsg) {
					t.Errorf("error %q does not contain %q", e.Error(), tc.wantMsg)
				}
			}
			if out != nil {
				t.Errorf("got answer %s with the error", out)
			}
			if got, want := len(f.eng.endpoints()), 1; got != want {
				t.Errorf("engine called %d times, want %d", got, want)
			}
			if got := f.pub.published(); len(got) != 0 {
				t.Errorf("published %d events for a failed request, want none", len(got))
			}
		})
	}
}
