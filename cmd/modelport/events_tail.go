package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/modelport/modelport/libs/access"
	"github.com/modelport/modelport/libs/events"
	"github.com/modelport/modelport/libs/natsx"
	"github.com/nats-io/nats.go/jetstream"
)

const eventsTailSynopsis = "tail [--subject PATTERN]... [--since TIME|DURATION] [--nats URL] [--nkey FILE | --creds FILE]"

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

// tailPoll is how often a caught-up tail asks each stream for new events.
const tailPoll = 200 * time.Millisecond

// runEventsTail follows the event streams as the read-only events-reader
// identity: message by message, with no consumer, so it can neither take
// events from the platform's durable consumers nor change them.
func runEventsTail(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("events tail", eventsTailSynopsis, true)
	var subjects stringsFlag
	fs.Var(&subjects, "subject", "only subjects matching this pattern, with NATS wildcards * and > (repeat for more; default: every event)")
	since := fs.String("since", "", "replay from this time (RFC 3339, a date, or a duration before now such as 1h) before following; default: only new events")
	natsURL := fs.String("nats", "", "the platform's NATS server (default: $MODELPORT_NATS_URL, else where the platform logged in to says, else "+defaultNATSURL+")")
	nkey := fs.String("nkey", "", "the events-reader identity's NKey seed (default: $MODELPORT_NATS_NKEY, else the one the platform logged in to hands admin keys, else events-reader.nk in the local platform's $MODELPORT_DATA_DIR/nats)")
	creds := fs.String("creds", "", "a NATS creds file for the events-reader identity instead (default: $MODELPORT_NATS_CREDS)")
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
	var start time.Time
	from := "now"
	if *since != "" {
		if start, err = parseWhen(*since, time.Now()); err != nil {
			return fmt.Errorf("--since: %w", err)
		}
		from = start.Local().Format(time.RFC3339)
	}

	es, err := c.eventStream(ctx, *natsURL)
	if err != nil {
		return err
	}
	url := es.NATSURL
	if *nkey == "" && *creds == "" && es.NKeySeed != "" {
		if *nkey, err = c.saveReaderSeed(es.NKeySeed); err != nil {
			return err
		}
	}
	opts, err := c.readerCredentials(*nkey, *creds, url)
	if err != nil {
		return err
	}
	quiet := slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	nc, js, err := natsx.Connect(url, access.EventsReader, quiet, opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	if !nc.IsConnected() {
		return fmt.Errorf("cannot reach NATS at %s\nIs the platform running? Pass --nats URL or set MODELPORT_NATS_URL (modelport up prints it).", url)
	}

	ctx, stop := context.WithCancel(ctx)
	defer stop()
	p := &eventPrinter{c: c, stop: stop}
	var names []string
	var readers []*natsx.StreamReader
	setUp := time.Now()
	gctx, done := natsx.Guard(ctx, nc)
	defer done()
	for _, sp := range plan {
		st, err := js.Stream(gctx, sp.stream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("stream %s not found at %s: has the platform started there?", sp.stream, url)
		}
		if err != nil {
			return fmt.Errorf("follow stream %s: %w", sp.stream, natsx.Explain(nc, setUp, err))
		}
		r, err := natsx.NewStreamReader(gctx, st, start)
		if err != nil {
			return fmt.Errorf("follow stream %s: %w", sp.stream, natsx.Explain(nc, setUp, err))
		}
		readers = append(readers, r)
		names = append(names, sp.stream+" ("+strings.Join(sp.filters, " ")+")")
	}
	done()
	fmt.Fprintf(c.stderr, "Following %s from %s. Stop with Ctrl-C.\n", strings.Join(names, ", "), from)
	errc := make(chan error, len(plan))
	for i, sp := range plan {
		go func() { errc <- p.follow(ctx, sp, readers[i]) }()
	}
	select {
	case <-ctx.Done():
	case err = <-errc:
		stop()
	}
	if werr := p.err(); werr != nil {
		return werr
	}
	if err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// readerCredentials are the connection options for the events-reader
// identity: the flags, else the environment, else the seed a local
// platform (modelport up) keeps in its data folder.
func (c *cli) readerCredentials(nkey, creds, url string) ([]natsx.Option, error) {
	nkey = firstOf(nkey, c.getenv("MODELPORT_NATS_NKEY"))
	creds = firstOf(creds, c.getenv("MODELPORT_NATS_CREDS"))
	if nkey == "" && creds == "" {
		local := access.SeedFile(filepath.Join(firstOf(c.getenv("MODELPORT_DATA_DIR"), "./data"), "nats"), access.EventsReader)
		if _, err := os.Stat(local); err == nil {
			nkey = local
		}
	}
	var opts []natsx.Option
	switch {
	case nkey != "" && creds != "":
		return nil, errors.New("give the events-reader identity as --nkey or --creds, not both")
	case nkey != "":
		opts = append(opts, natsx.NKeyFile(nkey))
	case creds != "":
		opts = append(opts, natsx.CredsFile(creds))
	}
	ca, cert, key := c.getenv("MODELPORT_NATS_TLS_CA"), c.getenv("MODELPORT_NATS_TLS_CERT"), c.getenv("MODELPORT_NATS_TLS_KEY")
	if ca != "" || cert != "" || strings.HasPrefix(url, "tls://") {
		cfg, err := natsx.TLSConfig(ca, cert, key)
		if err != nil {
			return nil, fmt.Errorf("MODELPORT_NATS_TLS_*: %w", err)
		}
		opts = append(opts, natsx.TLS(cfg))
	}
	return opts, nil
}

// follow prints the events of one stream that match its filters, asking
// for new ones every tailPoll once caught up, until ctx ends.
func (p *eventPrinter) follow(ctx context.Context, sp streamPlan, r *natsx.StreamReader) error {
	for ctx.Err() == nil {
		m, err := r.Next(ctx)
		if errors.Is(err, natsx.ErrCaughtUp) {
			select {
			case <-ctx.Done():
			case <-time.After(tailPoll):
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("follow stream %s: %w", sp.stream, err)
		}
		if slices.ContainsFunc(sp.filters, func(f string) bool { return subjectMatches(f, m.Subject) }) {
			p.print(sp.stream, m)
		}
	}
	return nil
}

// subjectMatches reports whether subject matches pattern, with NATS
// wildcards.
func subjectMatches(pattern, subject string) bool {
	got, ok := intersectSubjects(pattern, subject)
	return ok && got == subject
}

// tailStream is where the events are and how to sign in there.
type tailStream struct {
	NATSURL string `json:"nats_url"`
	// NKeySeed is the events-reader identity's seed, which a platform
	// hands admin keys when its operator allows it.
	NKeySeed string `json:"nkey_seed"`
}

// eventStream returns the NATS server to follow: --nats, else
// $MODELPORT_NATS_URL, else the one the platform from --url, $MODELPORT_URL
// or the saved login names in GET /api/v1/me (with the events-reader's
// seed where it hands it out), else defaultNATSURL when no platform is
// known at all.
func (c *cli) eventStream(ctx context.Context, flagURL string) (tailStream, error) {
	if u := firstOf(flagURL, c.getenv("MODELPORT_NATS_URL")); u != "" {
		return tailStream{NATSURL: u}, nil
	}
	a, err := c.client()
	if errors.Is(err, errNotLoggedIn) {
		return tailStream{NATSURL: defaultNATSURL}, nil
	}
	if err != nil {
		return tailStream{}, err
	}
	var me struct {
		Admin  bool        `json:"admin"`
		Events *tailStream `json:"events"`
	}
	if _, _, err := a.do(ctx, http.MethodGet, "/api/v1/me", nil, &me); err != nil {
		return tailStream{}, fmt.Errorf("ask %s where its event stream is: %w\n(or pass --nats URL)", a.base, err)
	}
	switch {
	case me.Events != nil && me.Events.NATSURL != "":
		return *me.Events, nil
	case !me.Admin:
		return tailStream{}, fmt.Errorf("%s tells only admin keys where its event stream is, since the streams hold every owner's events: "+
			"log in with an admin key, or pass --nats URL", a.base)
	default:
		return tailStream{}, fmt.Errorf("%s does not say where its event stream is: pass --nats URL or set MODELPORT_NATS_URL", a.base)
	}
}

// saveReaderSeed keeps the events-reader seed a platform handed out in a
// file beside the saved login, readable by its owner alone, and returns
// the file's path.
func (c *cli) saveReaderSeed(seed string) (string, error) {
	cfg, err := configPath(c.getenv)
	if err != nil {
		return "", err
	}
	path := access.SeedFile(filepath.Dir(cfg), access.EventsReader)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("save the events-reader seed: %w", err)
	}
	if err := os.WriteFile(path, []byte(seed+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("save the events-reader seed: %w", err)
	}
	return path, os.Chmod(path, 0o600)
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

// eventPrinter prints events from several streams one whole line at a
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

func (p *eventPrinter) print(stream string, msg *jetstream.RawStreamMsg) {
	t, seq := msg.Time, msg.Sequence
	payload := msg.Data
	if !json.Valid(payload) {
		payload, _ = json.Marshal(string(payload))
	}
	var line []byte
	if p.c.json() {
		ev := tailedEvent{Stream: stream, Sequence: seq, Subject: msg.Subject, Time: t.UTC(), Event: payload}
		if h := msg.Header; len(h) > 0 {
			ev.Headers = make(map[string]string, len(h))
			for k := range h {
				ev.Headers[k] = h.Get(k)
			}
		}
		line, _ = json.Marshal(ev)
	} else {
		line = fmt.Appendf(nil, "%s  %s  %s", t.UTC().Format("2006-01-02T15:04:05.000Z"), msg.Subject, payload)
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
