package gateway_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/state"
	"github.com/modelport/modelport/services/router/internal/gateway"
)

// aliceVision is an image-understanding service of alice's, on i-v1.
var aliceVision = state.Service{
	ID: "s-alice-vision", OwnerID: alice.OwnerID, Name: "vision", AccessName: "u-" + alice.OwnerID + "/vision",
	BaseModel: "qwen2-vl-7b-instruct", Task: state.TaskImageUnderstanding, Engine: "simulator", Instances: 1,
	Status: state.StatusRunning, CreatedAt: time.Date(2025, 1, 5, 0, 0, 0, 0, time.UTC),
}

func newVisionFixture() fixture {
	f := newFixture()
	f.table.PutService(aliceVision)
	f.table.PutInstance(instance(aliceVision, "i-v1"))
	return f
}

// visionBody is a chat request to aliceVision with the given content parts.
func visionBody(parts ...string) []byte {
	return []byte(`{"model":"` + aliceVision.AccessName + `","messages":[{"role":"user","content":[` + strings.Join(parts, ",") + `]}]}`)
}

func imagePart(url string) string {
	return `{"type":"image_url","image_url":{"url":"` + url + `","detail":"high"}}`
}

func TestChatCompletionRejectsBadInputs(t *testing.T) {
	big := base64.StdEncoding.EncodeToString(make([]byte, 101))
	fits := base64.StdEncoding.EncodeToString(make([]byte, 100))
	param := "messages[0].content[1].image_url.url"
	text := `{"type":"text","text":"what is it?"}`
	for _, tc := range []struct {
		name      string
		body      string
		wantParam string
		wantMsg   string
	}{
		{"invalid UTF-8", `{"model":"m","messages":[{"role":"user","content":"` + "\xff\xfe" + `"}]}`, "", "not valid UTF-8 (first bad byte at offset 51)"},
		{"a cut UTF-8 sequence", `{"model":"m","messages":[{"role":"user","content":"` + "\xe2\x82" + `"}]}`, "", "not valid UTF-8"},
		{"role of the second message a number", `{"model":"m","messages":[{"role":"user","content":"hi"},{"role":5}]}`, "messages[1].role", "expected string, got number"},
		{"a message an array", `{"model":"m","messages":[{"role":"user","content":"hi"},[]]}`, "messages[1]", "expected object, got array"},
		{"a part a string", `{"model":"m","messages":[{"role":"user","content":["hi"]}]}`, "messages[0].content[0]", "expected object, got string"},
		{"the type of the third part a number", `{"model":"m","messages":[{"role":"user","content":[{"type":"text"},{"type":"text"},{"type":3}]}]}`, "messages[0].content[2].type", "expected string"},
		{"image_url.url a number", string(visionBody(text, `{"type":"image_url","image_url":{"url":7}}`)), "messages[0].content[1].image_url.url", "expected string"},
		{"Messages beside messages", `{"model":"m","messages":[{"role":"user","content":"hi"}],"Messages":[{"role":"user","content":"hi"}]}`, "Messages", `did you mean "messages"`},
		{"a Unicode case fold of messages", `{"model":"m","meſſages":[{"role":"user","content":"hi"}]}`, "meſſages", "case-sensitive"},
		{"Content in a message", `{"model":"m","messages":[{"role":"user","content":"hi","Content":[]}]}`, "messages[0].Content", `did you mean "messages[0].content"`},
		{"Image_URL in a part", string(visionBody(text, `{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"},"Image_URL":{"url":"http://10.0.0.1/"}}`)), "messages[0].content[1].Image_URL", "case-sensitive"},
		{"URL in an image_url", string(visionBody(text, `{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","URL":"http://10.0.0.1/"}}`)), "messages[0].content[1].image_url.URL", "case-sensitive"},
		{"Stream_Options", `{"model":"m","messages":[{"role":"user","content":"hi"}],"Stream_Options":{}}`, "Stream_Options", "case-sensitive"},
		{"bad base64", string(visionBody(text, imagePart("data:image/png;base64,AAA*"))), param, "not valid base64"},
		{"base64 cut short", string(visionBody(text, imagePart("data:image/png;base64,AAA"))), param, "not valid base64"},
		{"URL-safe base64", string(visionBody(text, imagePart("data:image/png;base64,-_-_"))), param, "not valid base64"},
		{"an image over the limit", string(visionBody(text, imagePart("data:image/png;base64,"+big))), param, "larger than 100 bytes"},
		{"no base64 marker", string(visionBody(text, imagePart("data:image/png,abc"))), param, "data:image/<type>;base64,<data>"},
		{"no comma", string(visionBody(text, imagePart("data:image/png;base64"))), param, "data:image/<type>;base64,<data>"},
		{"not an image type", string(visionBody(text, imagePart("data:text/html;base64,PGI+"))), param, "must hold an image"},
		{"no media type", string(visionBody(text, imagePart("data:;base64,AAAA"))), param, "must hold an image"},
		{"image/ alone", string(visionBody(text, imagePart("data:image/;base64,AAAA"))), param, "must hold an image"},
		{"no image", string(visionBody(text, imagePart("data:image/png;base64,"))), param, "holds no image"},
		{"data without a colon", string(visionBody(text, imagePart("data"))), param, "must be data:image"},
		{"javascript", string(visionBody(text, imagePart("javascript:alert(1)"))), param, "must be data:image"},
		{"a relative URL", string(visionBody(text, imagePart("/etc/passwd"))), param, "must be data:image"},
		{"gopher", string(visionBody(text, imagePart("gopher://127.0.0.1:6379/_"))), param, "must be data:image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newVisionFixture()
			f.g.MaxImageBytes = 100
			f.g.Images = &fakeFetcher{}
			out, err := complete(f.g, context.Background(), alice, "req-1", []byte(tc.body))
			e := checkErr(t, err, errs.Invalid, tc.wantParam)
			if !strings.Contains(e.Msg, tc.wantMsg) {
				t.Errorf("message %q does not contain %q", e.Msg, tc.wantMsg)
			}
			if out != nil || len(f.eng.endpoints()) != 0 || len(f.pub.published()) != 0 || len(f.g.Images.(*fakeFetcher).fetched()) != 0 {
				t.Errorf("a refused request had effects: answer %s, engine calls %v, events %d", out, f.eng.endpoints(), len(f.pub.published()))
			}
		})
	}
	t.Run("an image at the limit passes", func(t *testing.T) {
		f := newVisionFixture()
		f.g.MaxImageBytes = 100
		body := visionBody(text, imagePart("data:image/png;base64,"+fits), imagePart("DATA:IMAGE/PNG;BASE64,"+fits))
		if _, err := complete(f.g, context.Background(), alice, "req-1", body); err != nil {
			t.Fatal(err)
		}
		if calls := f.eng.calls; len(calls) != 1 || string(calls[0].body) != string(body) {
			t.Errorf("the engine got %v, want the body as sent", calls)
		}
	})
}

// fakeFetcher serves images by URL and records what it was asked for.
type fakeFetcher struct {
	mu     sync.Mutex
	urls   []string
	images map[string]string // URL to "media type,bytes"
	err    error
	wait   bool // block until the context ends
}

func (f *fakeFetcher) Fetch(ctx context.Context, url string, limit int64, _ func(int64) error) (string, []byte, error) {
	f.mu.Lock()
	f.urls = append(f.urls, url)
	f.mu.Unlock()
	if f.wait {
		<-ctx.Done()
		return "", nil, errs.E(errs.Invalid, "fetching the image took too long")
	}
	if f.err != nil {
		return "", nil, f.err
	}
	img, ok := f.images[url]
	if !ok {
		return "", nil, errs.E(errs.Invalid, "the image URL answered 404 Not Found")
	}
	mediaType, data, _ := strings.Cut(img, ",")
	if int64(len(data)) > limit {
		return "", nil, errs.E(errs.Invalid, "the image is larger than %d bytes", limit)
	}
	return mediaType, []byte(data), nil
}

func (f *fakeFetcher) fetched() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.urls...)
}

func TestImageURLsAreInlined(t *testing.T) {
	images := map[string]string{
		"https://img.example/cat.png": "image/png,PNGDATA",
		"HTTP://img.example/dog.jpg":  "image/jpeg,JPEGDATA",
	}
	t.Run("the engine gets the images, not the URLs", func(t *testing.T) {
		f := newVisionFixture()
		fetch := &fakeFetcher{images: images}
		f.g.Images = fetch
		body := []byte(`{"model":"` + aliceVision.AccessName + `","temperature":0.1,"messages":[` +
			`{"role":"system","content":"look closely"},` +
			`{"role":"user","name":"ann","content":[{"type":"text","text":"compare <these>"},` + imagePart("https://img.example/cat.png") + `,` +
			imagePart("data:image/gif;base64,R0lGOA==") + `,{"type":"image_url","image_url":{"url":"HTTP://img.example/dog.jpg"}}]}]}`)
		if _, err := complete(f.g, context.Background(), alice, "req-1", body); err != nil {
			t.Fatal(err)
		}
		if got := fetch.fetched(); len(got) != 2 {
			t.Errorf("fetched %v, want the two http(s) URLs", got)
		}
		var sent map[string]any
		if err := json.Unmarshal(f.eng.calls[0].body, &sent); err != nil {
			t.Fatal(err)
		}
		msgs := sent["messages"].([]any)
		user := msgs[1].(map[string]any)
		parts := user["content"].([]any)
		url := func(i int) string { return parts[i].(map[string]any)["image_url"].(map[string]any)["url"].(string) }
		for i, want := range map[int]string{
			1: "data:image/png;base64," + base64.StdEncoding.EncodeToString([]byte("PNGDATA")),
			2: "data:image/gif;base64,R0lGOA==",
			3: "data:image/jpeg;base64," + base64.StdEncoding.EncodeToString([]byte("JPEGDATA")),
		} {
			if got := url(i); got != want {
				t.Errorf("part %d url %q, want %q", i, got, want)
			}
		}
		if parts[1].(map[string]any)["image_url"].(map[string]any)["detail"] != "high" || user["name"] != "ann" ||
			parts[0].(map[string]any)["text"] != "compare <these>" || sent["temperature"] != 0.1 || msgs[0].(map[string]any)["content"] != "look closely" {
			t.Errorf("the rest of the request changed: %s", f.eng.calls[0].body)
		}
	})
	t.Run("the images of one request share one budget", func(t *testing.T) {
		f := newVisionFixture()
		f.g.Images = &fakeFetcher{images: images}
		f.g.MaxFetchedBytes = 10 // PNGDATA (7 bytes) fits, then only 3 are left for JPEGDATA (8)
		body := []byte(`{"model":"` + aliceVision.AccessName + `","messages":[{"role":"user","content":[` +
			imagePart("https://img.example/cat.png") + `,` + imagePart("HTTP://img.example/dog.jpg") + `]}]}`)
		_, err := complete(f.g, context.Background(), alice, "req-1", body)
		checkErr(t, err, errs.Invalid, "messages[0].content[1].image_url.url")
		if n := len(f.eng.calls); n != 0 {
			t.Errorf("the engine got %d requests, want none", n)
		}
	})
	t.Run("a stream is inlined too", func(t *testing.T) {
		f := newVisionFixture()
		f.g.Images = &fakeFetcher{images: images}
		f.eng.set(instance(aliceVision, "i-v1").Endpoint, answer{status: 200, body: sse(engineChunks...) + "data: [DONE]\n\n"})
		body := []byte(`{"model":"` + aliceVision.AccessName + `","stream":true,"messages":[{"role":"user","content":[` + imagePart("https://img.example/cat.png") + `]}]}`)
		reply, err := f.g.Chat(context.Background(), gateway.Call{Caller: alice, RequestID: "r", Body: body})
		if err != nil {
			t.Fatal(err)
		}
		reply.Stream.Close()
		got := string(f.eng.calls[0].body)
		if strings.Contains(got, "img.example") || !strings.Contains(got, `"include_usage":true`) {
			t.Errorf("the engine got %s", got)
		}
	})
	for _, tc := range []struct {
		name      string
		fetch     *fakeFetcher
		body      []byte
		wantParam string
		wantMsg   string
	}{
		{"the image cannot be fetched", &fakeFetcher{images: images}, visionBody(imagePart("https://img.example/missing.png")),
			"messages[0].content[0].image_url.url", "answered 404"},
		{"the second image cannot be fetched", &fakeFetcher{images: images}, visionBody(imagePart("https://img.example/cat.png"), imagePart("https://img.example/missing.png")),
			"messages[0].content[1].image_url.url", "answered 404"},
		{"the image is over the limit", &fakeFetcher{images: map[string]string{"https://img.example/big.png": "image/png," + strings.Repeat("x", 101)}}, visionBody(imagePart("https://img.example/big.png")),
			"messages[0].content[0].image_url.url", "larger than 100 bytes"},
		{"too many image URLs", &fakeFetcher{images: images}, visionBody(strings.Repeat(imagePart("https://img.example/cat.png")+",", 8) + imagePart("https://img.example/cat.png")),
			"messages[0].content[8].image_url.url", "at most 8 image URLs"},
		{"fetching takes too long", &fakeFetcher{wait: true}, visionBody(imagePart("https://img.example/slow.png")),
			"messages[0].content[0].image_url.url", "took too long"},
		{"no fetcher", nil, visionBody(imagePart("https://img.example/cat.png")),
			"messages[0].content[0].image_url.url", "does not fetch image URLs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newVisionFixture()
			f.g.MaxImageBytes = 100
			f.g.ImageFetchTimeout = 50 * time.Millisecond
			f.g.Images = nil
			if tc.fetch != nil {
				f.g.Images = tc.fetch
			}
			_, err := complete(f.g, context.Background(), alice, "req-1", tc.body)
			e := checkErr(t, err, errs.Invalid, tc.wantParam)
			if !strings.Contains(e.Msg, tc.wantMsg) {
				t.Errorf("message %q does not contain %q", e.Msg, tc.wantMsg)
			}
			if len(f.eng.endpoints()) != 0 || len(f.pub.published()) != 0 {
				t.Errorf("engine calls %v, events %d; want none", f.eng.endpoints(), len(f.pub.published()))
			}
		})
	}
	t.Run("the client going away", func(t *testing.T) {
		f := newVisionFixture()
		f.g.Images = &fakeFetcher{wait: true}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			time.Sleep(10 * time.Millisecond)
			cancel()
		}()
		_, err := complete(f.g, ctx, alice, "req-1", visionBody(imagePart("https://img.example/cat.png")))
		if err != context.Canceled {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	})
	t.Run("not fetched for a service that refuses images", func(t *testing.T) {
		f := newVisionFixture()
		fetch := &fakeFetcher{images: images}
		f.g.Images = fetch
		body := []byte(`{"model":"` + aliceChat.AccessName + `","messages":[{"role":"user","content":[` + imagePart("https://img.example/cat.png") + `]}]}`)
		_, err := complete(f.g, context.Background(), alice, "req-1", body)
		checkErr(t, err, errs.Invalid, "messages[0].content[0]")
		if got := fetch.fetched(); len(got) != 0 {
			t.Errorf("fetched %v for a text service", got)
		}
	})
}

// fakeLimiter records the gateway's calls and refuses when told.
type fakeLimiter struct {
	mu      sync.Mutex
	admits  []string // key/service/access name
	charges []string // key/service/tokens
	refuse  error
}

func (l *fakeLimiter) Admit(keyID, serviceID, accessName string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.admits = append(l.admits, keyID+"/"+serviceID+"/"+accessName)
	return l.refuse
}

func (l *fakeLimiter) Charge(keyID, serviceID string, tokens int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.charges = append(l.charges, keyID+"/"+serviceID+"/"+strconv.Itoa(tokens))
}

func TestRateLimits(t *testing.T) {
	t.Run("a chat is admitted, then charged what it used", func(t *testing.T) {
		f := newFixture()
		l := &fakeLimiter{}
		f.g.Limits = l
		if _, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceChat.AccessName)); err != nil {
			t.Fatal(err)
		}
		if want := []string{"k-alice/s-alice-chat/" + aliceChat.AccessName}; !slices.Equal(l.admits, want) {
			t.Errorf("admits %v, want %v", l.admits, want)
		}
		if want := []string{"k-alice/s-alice-chat/17"}; !slices.Equal(l.charges, want) {
			t.Errorf("charges %v, want %v", l.charges, want)
		}
	})
	t.Run("a stream is charged when it closes", func(t *testing.T) {
		f := newFixture()
		l := &fakeLimiter{}
		f.g.Limits = l
		for _, ep := range []string{"i-a1", "i-a2"} {
			f.eng.set(instance(aliceChat, ep).Endpoint, answer{status: 200, body: sse(engineChunks...) + "data: [DONE]\n\n"})
		}
		reply, err := f.g.Chat(context.Background(), gateway.Call{Caller: alice, RequestID: "r", Body: streamBody(aliceChat.AccessName, "")})
		if err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := reply.Stream.Next(); err != nil {
				break
			}
		}
		if err := reply.Stream.Close(); err != nil {
			t.Fatal(err)
		}
		if want := []string{"k-alice/s-alice-chat/15"}; !slices.Equal(l.charges, want) {
			t.Errorf("charges %v, want %v", l.charges, want)
		}
	})
	t.Run("an image generation is admitted and charged", func(t *testing.T) {
		f := newFixture()
		l := &fakeLimiter{}
		f.g.Limits = l
		f.eng.set(instance(aliceImage, "i-img").Endpoint, answer{status: 200, body: `{"created":1,"data":[{"b64_json":"iVBORw0KGgo="}],"usage":{"input_tokens":4,"output_tokens":0}}`})
		body := []byte(`{"model":"` + aliceImage.AccessName + `","prompt":"a cat","response_format":"b64_json"}`)
		if _, err := f.g.GenerateImages(context.Background(), gateway.Call{Caller: alice, RequestID: "r", Body: body}, nil, ""); err != nil {
			t.Fatal(err)
		}
		if len(l.admits) != 1 || !slices.Equal(l.charges, []string{"k-alice/s-alice-image/4"}) {
			t.Errorf("admits %v, charges %v", l.admits, l.charges)
		}
	})
	t.Run("a refused call reaches no engine and is not billed", func(t *testing.T) {
		f := newFixture()
		refusal := &errs.Error{Kind: errs.RateLimited, Msg: "slow down", RetryAfter: 3 * time.Second}
		l := &fakeLimiter{refuse: refusal}
		f.g.Limits = l
		_, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceChat.AccessName))
		if err != refusal {
			t.Fatalf("err = %v, want the limiter's refusal", err)
		}
		body := []byte(`{"model":"` + aliceImage.AccessName + `","prompt":"a cat"}`)
		if _, err := f.g.GenerateImages(context.Background(), gateway.Call{Caller: alice, RequestID: "r", Body: body}, nil, "http://router.test"); err != refusal {
			t.Fatalf("images: err = %v, want the limiter's refusal", err)
		}
		if len(f.eng.endpoints()) != 0 || len(f.pub.published()) != 0 || len(l.charges) != 0 {
			t.Errorf("engine calls %v, events %v, charges %v; want none", f.eng.endpoints(), f.pub.published(), l.charges)
		}
	})
	t.Run("a bad request is refused before the limits", func(t *testing.T) {
		f := newFixture()
		l := &fakeLimiter{}
		f.g.Limits = l
		_, err := complete(f.g, context.Background(), alice, "req-1", []byte(`{"model":"`+aliceChat.AccessName+`","messages":[]}`))
		checkErr(t, err, errs.Invalid, "messages")
		if len(l.admits) != 0 {
			t.Errorf("admits %v, want none", l.admits)
		}
	})
	t.Run("usage that cannot be recorded is still charged", func(t *testing.T) {
		f := newFixture()
		l := &fakeLimiter{}
		f.g.Limits = l
		f.pub.err = errs.E(errs.Unavailable, "jetstream down")
		_, err := complete(f.g, context.Background(), alice, "req-1", chatBody(aliceChat.AccessName))
		checkErr(t, err, errs.Unavailable, "")
		if !slices.Equal(l.charges, []string{"k-alice/s-alice-chat/17"}) {
			t.Errorf("charges %v", l.charges)
		}
	})
}
