package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const eventsTailSynopsis = "tail [--subject PATTERN]... [--since TIME|DURATION] [--nats URL]"

// defaultNATSURL is where events tail looks when no platform is known:
// modelport up's embedded server on its default port.
const defaultNATSURL = "nats://127.0.0.1:4222"

func runEvents(ctx context.Context, c *cli, args []string) error {
	if len(args) == 0 || args[0] != "tail" {
		fmt.Fprintf(c.stderr, "usage: modelport events %s\n", eventsTailSynopsis)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return nil
		}
		return errors.New("events: want a subcommand: tail")
	}
	return runEventsTail(ctx, c, args[1:])
}

// runEventsTail follows the event streams with one ordered consumer per
// stream: ephemeral, in memory, nothing to clean up, and it never takes
// events from the platform's own durable consumers.
func runEventsTail(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("events tail", eventsTailSynopsis, true)
	var subjects stringsFlag
	fs.Var(&subjects, "subject", "only subjects matching this pattern, with NATS wildcards * and > (repeat for more; default: every event)")
	since := fs.String("since", "", "replay from this time (RFC 3339, a date, or a duration before now such as 1h) before following; default: only new events")
	natsURL := fs.String("nats", "", "the platform's NATS server (default: $MODELPORT_NATS_URL, else where the platform logged in to says, else "+defaultNATSURL+")")
	if _, err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	for _, s := range subjects {
		if err := checkSubjectPattern(s); err != nil {
			return fmt.Errorf("--subject %q: %w", s, err)
		}
	}
	plan, err := tailPlan(subjects)
	if err != nil {
		return err
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy}
	from := "now"
	if *since != "" {
		t, err := parseWhen(*since, time.Now())
		if err != nil {
			return fmt.Errorf("--since: %w", err)
		}
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &t
		from = t.Local().Format(time.RFC3339)
	}

	url, err := c.eventsURL(ctx, *natsURL)
	if err != nil {
		return err
	}
	nc, err := nats.Connect(url, nats.Name("modelport events tail"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("cannot reach NATS at %s: %w\nIs the platform running? Pass --nats URL or set MODELPORT_NATS_URL (modelport up prints it).", url, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	p := &eventPrinter{c: c, stop: stop}
	var names []string
	for _, sp := range plan {
		cc := cfg
		cc.FilterSubjects = sp.filters
		cons, err := js.OrderedConsumer(ctx, sp.stream, cc)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("stream %s not found at %s: has the platform started there?", sp.stream, url)
		}
		if err != nil {
			return fmt.Errorf("follow stream %s: %w", sp.stream, err)
		}
		cctx, err := cons.Consume(p.print)
		if err != nil {
			return fmt.Errorf("follow stream %s: %w", sp.stream, err)
		}
		defer cctx.Stop()
		names = append(names, sp.stream+" ("+strings.Join(sp.filters, " ")+")")
	}
	fmt.Fprintf(c.stderr, "Following %s from %s. Stop with Ctrl-C.\n", strings.Join(names, ", "), from)
	<-ctx.Done()
	return p.err()
}

// eventsURL returns the NATS server to follow: --nats, else
// $MODELPORT_NATS_URL, else the one the platform from --url, $MODELPORT_URL
// or the saved login names in GET /api/v1/me, else defaultNATSURL when no
// platform is known at all.
func (c *cli) eventsURL(ctx context.Context, flagURL string) (string, error) {
	if u := firstOf(flagURL, c.getenv("MODELPORT_NATS_URL")); u != "" {
		return u, nil
	}
	a, err := c.client()
	if errors.Is(err, errNotLoggedIn) {
		return defaultNATSURL, nil
	}
	if err != nil {
		return "", err
	}
	var me struct {
		Admin  bool `json:"admin"`
		Events *struct {
			NATSURL string `json:"nats_url"`
		} `json:"events"`
	}
	if _, _, err := a.do(ctx, http.MethodGet, "/api/v1/me", nil, &me); err != nil {
		return "", fmt.Errorf("ask %s where its event stream is: %w\n(or pass --nats URL)", a.base, err)
	}
	switch {
	case me.Events != nil && me.Events.NATSURL != "":
		return me.Events.NATSURL, nil
	case !me.Admin:
		return "", fmt.Errorf("%s tells only admin keys where its event stream is, since the streams hold every owner's events: "+
			"log in with an admin key, or pass --nats URL", a.base)
	default:
		return "", fmt.Errorf("%s does not say where its event stream is: pass --nats URL or set MODELPORT_NATS_URL", a.base)
	}
}

// streamPlan is what to consume from one stream.
type streamPlan struct {
	stream  string
	filters []string
}

// tailPlan returns the streams that can hold subjects matching any of the
// patterns, each with the patterns narrowed to it, so a consumer's filter
// is always within its stream. No patterns: every stream, whole.
func tailPlan(patterns []string) ([]streamPlan, error) {
	var plan []streamPlan
	for _, st := range events.Streams {
		var filters []string
		for _, ss := range st.Subjects {
			if len(patterns) == 0 {
				filters = append(filters, ss)
				continue
			}
			for _, p := range patterns {
				if f, ok := intersectSubjects(p, ss); ok && !slices.Contains(filters, f) {
					filters = append(filters, f)
				}
			}
		}
		if len(filters) > 0 {
			plan = append(plan, streamPlan{stream: st.Name, filters: filters})
		}
	}
	if len(plan) == 0 {
		var all []string
		for _, st := range events.Streams {
			all = append(all, st.Subjects...)
		}
		return nil, fmt.Errorf("no event stream holds subjects matching %s: the streams hold %s", strings.Join(patterns, ", "), strings.Join(all, ", "))
	}
	return plan, nil
}

// checkSubjectPattern accepts NATS subjects with the wildcards * (one
// token) and > (the rest, last only).
func checkSubjectPattern(p string) error {
	if p == "" {
		return errors.New("empty subject")
	}
	tokens := strings.Split(p, ".")
	for i, t := range tokens {
		switch {
		case t == "":
			return errors.New("empty token: subjects are tokens separated by single dots")
		case strings.ContainsAny(t, " \t\r\n"):
			return errors.New("subjects have no spaces")
		case t == ">" && i != len(tokens)-1:
			return errors.New("> must be the last token")
		case t != "*" && t != ">" && strings.ContainsAny(t, "*>"):
			return errors.New("* and > are whole tokens")
		}
	}
	return nil
}

// intersectSubjects returns the pattern matching exactly the subjects that
// both patterns match, and false when there are none.
func intersectSubjects(a, b string) (string, bool) {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	var out []string
	for i := 0; ; i++ {
		switch {
		case i == len(at) && i == len(bt):
			return strings.Join(out, "."), true
		case i == len(at) || i == len(bt):
			return "", false
		}
		x, y := at[i], bt[i]
		switch {
		case x == ">":
			return strings.Join(append(out, bt[i:]...), "."), true
		case y == ">":
			return strings.Join(append(out, at[i:]...), "."), true
		case x == "*":
			out = append(out, y)
		case y == "*" || x == y:
			out = append(out, x)
		default:
			return "", false
		}
	}
}

// eventPrinter prints events from several consumers one whole line at a
// time. It remembers the first write error: stdout closed ends the tail.
type eventPrinter struct {
	c    *cli
	stop func() // ends the tail

	mu   sync.Mutex
	werr error
}

// tailedEvent is one line of --output json.
type tailedEvent struct {
	Stream   string            `json:"stream"`
	Sequence uint64            `json:"sequence"`
	Subject  string            `json:"subject"`
	Time     time.Time         `json:"time"`
	Headers  map[string]string `json:"headers,omitempty"`
	Event    json.RawMessage   `json:"event"`
}

func (p *eventPrinter) print(msg jetstream.Msg) {
	var t time.Time
	var stream string
	var seq uint64
	if md, err := msg.Metadata(); err == nil {
		t, stream, seq = md.Timestamp, md.Stream, md.Sequence.Stream
	}
	payload := msg.Data()
	if !json.Valid(payload) {
		payload, _ = json.Marshal(string(payload))
	}
	var line []byte
	if p.c.json() {
		ev := tailedEvent{Stream: stream, Sequence: seq, Subject: msg.Subject(), Time: t.UTC(), Event: payload}
		if h := msg.Headers(); len(h) > 0 {
			ev.Headers = make(map[string]string, len(h))
			for k := range h {
				ev.Headers[k] = h.Get(k)
			}
		}
		line, _ = json.Marshal(ev)
	} else {
		line = fmt.Appendf(nil, "%s  %s  %s", t.UTC().Format("2006-01-02T15:04:05.000Z"), msg.Subject(), payload)
	}
	line = append(line, '\n')
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.werr != nil {
		return
	}
	if _, p.werr = p.c.stdout.Write(line); p.werr != nil {
		p.stop()
	}
}

func (p *eventPrinter) err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.werr
}
