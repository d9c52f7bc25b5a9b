package gateway_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/services/router/internal/gateway"
	"github.com/modelport/modelport/services/router/internal/routing"
)

// discard is a publisher that keeps nothing.
type discard struct{}

func (discard) Publish(context.Context, events.Event) error { return nil }

// BenchmarkEndpoints measures the gateway's own work per request for each
// endpoint it relays, against an engine that answers at once from
// memory: what the router adds to a request, chat being the baseline.
// Run it with
//
//	go test -run '^$' -bench Endpoints -benchmem ./services/router/internal/gateway
func BenchmarkEndpoints(b *testing.B) {
	streamed := sse(append(engineChunks, done)...)
	embedded := `{"object":"list","data":[{"object":"embedding","index":0,"embedding":[` +
		strings.TrimSuffix(strings.Repeat("0.0441941738,", 768), ",") + `]}],"model":"m","usage":{"prompt_tokens":7,"total_tokens":7}}`
	for _, bc := range []struct {
		name, answer, body string
		serve              func(*gateway.Gateway) func(context.Context, gateway.Call) (*gateway.Reply, error)
	}{
		{"chat", completion, `{"model":"` + aliceChat.AccessName + `","messages":[{"role":"user","content":"Say this is a test!"}]}`,
			func(g *gateway.Gateway) func(context.Context, gateway.Call) (*gateway.Reply, error) { return g.Chat }},
		{"responses", completion, `{"model":"` + aliceChat.AccessName + `","input":"Say this is a test!"}`,
			func(g *gateway.Gateway) func(context.Context, gateway.Call) (*gateway.Reply, error) {
				return g.Responses
			}},
		{"completions", textCompletion, `{"model":"` + aliceChat.AccessName + `","prompt":"Say this is a test!"}`,
			func(g *gateway.Gateway) func(context.Context, gateway.Call) (*gateway.Reply, error) {
				return g.Completions
			}},
		{"embeddings 768", embedded, `{"model":"` + aliceEmbed.AccessName + `","input":"Say this is a test!"}`,
			func(g *gateway.Gateway) func(context.Context, gateway.Call) (*gateway.Reply, error) {
				return g.Embeddings
			}},
		{"chat stream", streamed, `{"model":"` + aliceChat.AccessName + `","messages":[{"role":"user","content":"Say this is a test!"}],"stream":true}`,
			func(g *gateway.Gateway) func(context.Context, gateway.Call) (*gateway.Reply, error) { return g.Chat }},
		{"responses stream", streamed, `{"model":"` + aliceChat.AccessName + `","input":"Say this is a test!","stream":true}`,
			func(g *gateway.Gateway) func(context.Context, gateway.Call) (*gateway.Reply, error) {
				return g.Responses
			}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f := newEndpointsFixture()
			g := gateway.New(f.table, routing.NewDemand(), engineFunc(func(context.Context) (int, io.ReadCloser, error) {
				return 200, io.NopCloser(strings.NewReader(bc.answer)), nil
			}), discard{}, quiet)
			serve := bc.serve(g)
			body := []byte(bc.body)
			b.ReportAllocs()
			for b.Loop() {
				reply, err := serve(context.Background(), gateway.Call{Caller: alice, RequestID: "r", Body: body})
				if err != nil {
					b.Fatal(err)
				}
				if s := reply.Stream; s != nil {
					for {
						if _, err := s.Next(); err != nil {
							if !errors.Is(err, io.EOF) {
								b.Fatal(err)
							}
							break
						}
					}
					if err := s.Close(); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
