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
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/modelport/modelport/libs/catalog"
	"github.com/modelport/modelport/libs/state"
	"golang.org/x/term"
)

func runLogin(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("login", "[--url URL] [--key KEY]", true)
	if _, err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	path, err := configPath(c.getenv)
	if err != nil {
		return err
	}
	saved, _ := loadConfig(path) // a broken file is rewritten
	rawURL := firstOf(c.url, c.getenv("MODELPORT_URL"), saved.URL, "http://127.0.0.1:8080")
	key := strings.TrimSpace(c.key)
	if key == "" {
		if key, err = readSecret(c.stdin, c.stderr, "API key for "+baseURL(rawURL)+": "); err != nil {
			return err
		}
	}
	if key == "" {
		return errors.New("no API key: pass --key KEY or type it when asked (modelport up prints the admin key)")
	}
	a := newAPIClient(rawURL, key)
	if _, _, err := a.do(ctx, http.MethodGet, "/api/v1/catalog", nil, nil); err != nil {
		return fmt.Errorf("log in to %s: %w", a.base, err)
	}
	if err := saveConfig(path, cliConfig{URL: a.base, Key: a.key}); err != nil {
		return err
	}
	if c.json() {
		return c.printValue(map[string]string{"url": a.base, "config": path})
	}
	fmt.Fprintf(c.stdout, "Logged in to %s. The URL and key are saved in %s.\n", a.base, path)
	return nil
}

// readSecret reads a line from in: on a terminal after a prompt and
// without echo, otherwise (a pipe) as it comes.
func readSecret(in io.Reader, prompt io.Writer, text string) (string, error) {
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(prompt, text)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(prompt)
		if err != nil {
			return "", fmt.Errorf("read the API key: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	line, err := readLine(in)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read the API key: %w", err)
	}
	return line, nil
}

// readLine reads one line from in, without its end; io.EOF when there
// is none.
func readLine(in io.Reader) (string, error) {
	line, err := bufio.NewReader(in).ReadString('\n')
	line = strings.TrimSpace(line)
	if errors.Is(err, io.EOF) && line != "" {
		err = nil
	}
	return line, err
}

func runCatalog(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("catalog", "", true)
	if _, err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	var models []catalog.Model
	raw, _, err := a.do(ctx, http.MethodGet, "/api/v1/catalog", nil, &models)
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(raw)
	}
	tw := c.table()
	fmt.Fprintln(tw, "NAME\tTASKS\tENGINE\tCONTEXT\tGPUS\tDESCRIPTION")
	for _, m := range models {
		desc := m.DisplayName
		if m.FineTuned() {
			desc += " (fine-tuned " + m.Base + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", m.Name, strings.Join(m.Tasks, ","), m.Engine, m.ContextLength, m.GPUs, desc)
	}
	return tw.Flush()
}

func runDeploy(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("deploy", "NAME --model BASE [--task T] [--instances N] [--billing per-token|per-instance-hour] [--routing POLICY] [--wait]", true)
	model := fs.String("model", "", "base model: from the catalog or registered (modelport models ls lists them); required")
	task := fs.String("task", "", "text-generation, image-understanding or image-generation (default: the model's only task)")
	instances := fs.Int("instances", 1, "number of instances")
	billing := fs.String("billing", "per-token", "billing method: per-token or per-instance-hour")
	routing := fs.String("routing", "", "routing policy: "+strings.Join(state.RoutingPolicies, ", ")+" (default: prefix-affinity for text generation, least-outstanding otherwise)")
	wait := fs.Bool("wait", false, "wait until every instance is ready")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long --wait waits")
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if *model == "" {
		return errors.New("deploy: --model is required (modelport models ls lists the base models)")
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	req := map[string]any{"name": pos[0], "base_model": *model, "task": *task, "instances": *instances, "billing_method": *billing}
	if *routing != "" {
		req["routing_policy"] = *routing
	}
	var s state.Service
	raw, _, err := a.do(ctx, http.MethodPost, "/api/v1/services", req, &s)
	if err != nil {
		return fmt.Errorf("deploy %s: %w", pos[0], err)
	}
	if !c.json() {
		fmt.Fprintf(c.stderr, "Deploying %s as %s (service ID %s).\n", s.Name, s.AccessName, s.ID)
	}
	if *wait {
		if s, raw, err = c.waitService(ctx, a, s, *timeout, func(s state.Service) bool {
			return s.Status == state.StatusRunning && s.ReadyInstances >= s.Instances
		}); err != nil {
			return err
		}
	}
	if c.json() {
		return c.printJSON(raw)
	}
	return c.printService(s)
}

func runList(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("ls", "[--status S] [--task T]", true)
	status := fs.String("status", "", "only services with this status (deleted ones only when asked for)")
	task := fs.String("task", "", "only services of this task")
	if _, err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	q := url.Values{}
	if *status != "" {
		q.Set("status", *status)
	}
	if *task != "" {
		q.Set("task", *task)
	}
	raws, list, err := listServices(ctx, a, q)
	if err != nil {
		return err
	}
	if c.json() {
		return c.printValue(raws)
	}
	if len(list) == 0 {
		fmt.Fprintln(c.stderr, "No services. Deploy one with: modelport deploy NAME --model BASE (modelport catalog lists them)")
		return nil
	}
	tw := c.table()
	fmt.Fprintln(tw, "NAME\tACCESS NAME\tSERVICE ID\tBASE MODEL\tTASK\tREADY\tSTATUS\tBILLING\tCREATED")
	for _, s := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\t%s\n", s.Name, s.AccessName, s.ID, s.BaseModel, s.Task,
			s.ReadyInstances, s.Instances, s.Status, s.BillingMethod, localTime(s.CreatedAt))
	}
	return tw.Flush()
}

// maxPages bounds how many pages a listing follows.
const maxPages = 1000

// listServices returns every service the key may see, following the
// listing's next links, each as the API sent it and decoded.
func listServices(ctx context.Context, a *apiClient, q url.Values) ([]json.RawMessage, []state.Service, error) {
	path := "/api/v1/services"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var (
		raws []json.RawMessage
		list []state.Service
	)
	for page := 0; path != "" && page < maxPages; page++ {
		var items []json.RawMessage
		_, h, err := a.do(ctx, http.MethodGet, path, nil, &items)
		if err != nil {
			return nil, nil, err
		}
		for _, item := range items {
			var s state.Service
			if err := json.Unmarshal(item, &s); err != nil {
				return nil, nil, fmt.Errorf("list services: unexpected answer: %w", err)
			}
			raws, list = append(raws, item), append(list, s)
		}
		path = nextLink(h)
	}
	if raws == nil {
		raws = []json.RawMessage{}
	}
	return raws, list, nil
}

// resolveService finds a service by ID, name or access name, and returns
// it decoded and as the API sent it. Several services may share a name
// across owners (an admin sees them all) or over time (deleted ones):
// then the live ones count, and more than one is an error listing them.
func resolveService(ctx context.Context, a *apiClient, ref string) (state.Service, []byte, error) {
	var s state.Service
	if ref == "" {
		return s, nil, errors.New("no service named: give its name or ID")
	}
	if !strings.ContainsAny(ref, "/?#") {
		raw, _, err := a.do(ctx, http.MethodGet, "/api/v1/services/"+url.PathEscape(ref), nil, &s)
		if err == nil {
			return s, raw, nil
		}
		if !isStatus(err, http.StatusNotFound) && !isStatus(err, http.StatusBadRequest) {
			return s, nil, err
		}
	}
	// Live services first; a deleted one only when no live one has the
	// name, as its usage can still be read.
	var (
		raws  []json.RawMessage
		list  []state.Service
		found []int
	)
	for _, q := range []url.Values{nil, {"status": {state.StatusDeleted}}} {
		var err error
		if raws, list, err = listServices(ctx, a, q); err != nil {
			return s, nil, err
		}
		for i, s := range list {
			if s.Name == ref || s.AccessName == ref {
				found = append(found, i)
			}
		}
		if len(found) > 0 {
			break
		}
	}
	switch len(found) {
	case 0:
		return s, nil, fmt.Errorf("service %q not found (modelport ls lists your services)", ref)
	case 1:
		return list[found[0]], raws[found[0]], nil
	default:
		var ids []string
		for _, i := range found {
			ids = append(ids, list[i].ID+" ("+list[i].AccessName+")")
		}
		return s, nil, fmt.Errorf("%d services are named %q: give one's service ID: %s", len(found), ref, strings.Join(ids, ", "))
	}
}

func runGet(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("get", "NAME|ID", true)
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	s, raw, err := resolveService(ctx, a, pos[0])
	if err != nil {
		return err
	}
	if c.json() {
		return c.printJSON(raw)
	}
	return c.printService(s)
}

// printService shows every field of a service, one a line.
func (c *cli) printService(s state.Service) error {
	tw := c.table()
	for _, row := range [][2]string{
		{"Name", s.Name},
		{"Access name", s.AccessName},
		{"Service ID", s.ID},
		{"Base model", s.BaseModel},
		{"Engine", s.Engine},
		{"Task", s.Task},
		{"Instances", fmt.Sprintf("%d/%d ready", s.ReadyInstances, s.Instances)},
		{"Status", s.Status},
		{"Billing method", s.BillingMethod},
		{"Routing", s.Routing()},
		{"Owner", s.OwnerID},
		{"Created", localTime(s.CreatedAt)},
		{"Updated", localTime(s.UpdatedAt)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

// waitService polls the service until done says so, printing its progress
// on stderr; a failed service or the timeout ends the wait with an error.
func (c *cli) waitService(ctx context.Context, a *apiClient, s state.Service, timeout time.Duration, done func(state.Service) bool) (state.Service, []byte, error) {
	deadline := time.Now().Add(timeout)
	var (
		raw  []byte
		last string
	)
	for {
		progress := fmt.Sprintf("%s: %d/%d instances ready", s.Status, s.ReadyInstances, s.Instances)
		if progress != last {
			fmt.Fprintf(c.stderr, "  %s %s\n", s.Name, progress)
			last = progress
		}
		if raw != nil && done(s) {
			return s, raw, nil
		}
		if s.Status == state.StatusFailed {
			return s, nil, fmt.Errorf("service %s failed (modelport get %s shows it; modelport events tail --since 1h --subject 'worker.>' says why)", s.Name, s.ID)
		}
		if raw != nil && time.Now().After(deadline) {
			return s, nil, fmt.Errorf("service %s is still %s after %s (modelport get %s follows it)", s.Name, progress, timeout, s.ID)
		}
		if raw != nil {
			select {
			case <-ctx.Done():
				return s, nil, ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
		}
		var err error
		if raw, _, err = a.do(ctx, http.MethodGet, "/api/v1/services/"+url.PathEscape(s.ID), nil, &s); err != nil {
			return s, nil, err
		}
	}
}

func runScale(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("scale", "NAME|ID INSTANCES [--wait]", true)
	wait := fs.Bool("wait", false, "wait until that many instances are ready")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long --wait waits")
	pos, err := c.parse(fs, args, 2, 2)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(pos[1])
	if err != nil || n < 0 {
		return fmt.Errorf("scale: INSTANCES must be a whole number, 0 or more, not %q", pos[1])
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	s, _, err := resolveService(ctx, a, pos[0])
	if err != nil {
		return err
	}
	from := s.Instances
	raw, _, err := a.do(ctx, http.MethodPost, "/api/v1/services/"+url.PathEscape(s.ID)+"/scale", map[string]int{"instances": n}, &s)
	if err != nil {
		return fmt.Errorf("scale %s: %w", s.Name, err)
	}
	if !c.json() {
		fmt.Fprintf(c.stderr, "Scaling %s from %d to %d instances.\n", s.Name, from, n)
	}
	if *wait {
		if s, raw, err = c.waitService(ctx, a, s, *timeout, func(s state.Service) bool {
			if n == 0 {
				return s.Status == state.StatusIdle
			}
			return s.Status == state.StatusRunning && s.ReadyInstances == n
		}); err != nil {
			return err
		}
	}
	if c.json() {
		return c.printJSON(raw)
	}
	return c.printService(s)
}

// runRouting shows a service's routing policy, or sets it.
func runRouting(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("routing", "NAME|ID ["+strings.Join(state.RoutingPolicies, "|")+"]", true)
	pos, err := c.parse(fs, args, 1, 2)
	if err != nil {
		return err
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	s, raw, err := resolveService(ctx, a, pos[0])
	if err != nil {
		return err
	}
	if len(pos) == 1 {
		if c.json() {
			return c.printValue(map[string]any{"id": s.ID, "name": s.Name, "routing_policy": s.Routing(), "policies": state.RoutingPolicies})
		}
		fmt.Fprintf(c.stdout, "%s is routed by %s (policies: %s; docs/services.md#routing compares them).\n", s.Name, s.Routing(), strings.Join(state.RoutingPolicies, ", "))
		return nil
	}
	from := s.Routing()
	if raw, _, err = a.do(ctx, http.MethodPut, "/api/v1/services/"+url.PathEscape(s.ID)+"/routing", map[string]string{"policy": pos[1]}, &s); err != nil {
		return fmt.Errorf("routing %s: %w", s.Name, err)
	}
	if c.json() {
		return c.printJSON(raw)
	}
	fmt.Fprintf(c.stderr, "Routing %s by %s (was %s).\n", s.Name, s.Routing(), from)
	return c.printService(s)
}

func runDelete(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("delete", "NAME|ID [--confirm NAME] [--wait]", true)
	confirm := fs.String("confirm", "", "the service's name, to delete without being asked")
	wait := fs.Bool("wait", false, "wait until its instances have stopped")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long --wait waits")
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	confirmed := false
	fs.Visit(func(f *flag.Flag) { confirmed = confirmed || f.Name == "confirm" })
	a, err := c.client()
	if err != nil {
		return err
	}
	s, _, err := resolveService(ctx, a, pos[0])
	if err != nil {
		return err
	}
	if !confirmed {
		fmt.Fprintf(c.stderr, "Deleting %s (%s) stops it answering at once and cannot be undone.\nType the service name to confirm: ", s.Name, s.ID)
		line, err := readLine(c.stdin)
		if err != nil {
			fmt.Fprintln(c.stderr)
			return errors.New("refused: no confirmation was typed; nothing was deleted (type the name when asked, or pass --confirm NAME)")
		}
		*confirm = line
	}
	if *confirm != s.Name {
		return fmt.Errorf("refused: %q is not the service's name; nothing was deleted", *confirm)
	}
	raw, _, err := a.do(ctx, http.MethodDelete, "/api/v1/services/"+url.PathEscape(s.ID), map[string]string{"confirm_name": *confirm}, &s)
	if err != nil {
		return fmt.Errorf("delete %s: %w", s.Name, err)
	}
	if *wait {
		if s, raw, err = c.waitService(ctx, a, s, *timeout, func(s state.Service) bool { return s.Status == state.StatusDeleted }); err != nil {
			return err
		}
	}
	if c.json() {
		return c.printJSON(raw)
	}
	fmt.Fprintf(c.stdout, "Deleted %s (%s): it no longer answers; status %s.\n", s.Name, s.ID, s.Status)
	return nil
}

func runUsage(ctx context.Context, c *cli, args []string) error {
	fs := c.flags("usage", "NAME|ID [--from T] [--to T] [--group-by hour|day|api_key]", true)
	from := fs.String("from", "", "start: an RFC 3339 time, a date (2026-01-02) or a duration before now (24h)")
	to := fs.String("to", "", "end, in the same forms as --from")
	groupBy := fs.String("group-by", "", "break the totals down by hour, day or api_key")
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	now := time.Now()
	q := url.Values{}
	for _, p := range []struct{ flag, param, v string }{{"--from", "from", *from}, {"--to", "to", *to}} {
		if p.v == "" {
			continue
		}
		t, err := parseWhen(p.v, now)
		if err != nil {
			return fmt.Errorf("%s: %w", p.flag, err)
		}
		q.Set(p.param, t.UTC().Format(time.RFC3339))
	}
	if *groupBy != "" {
		q.Set("group_by", *groupBy)
	}
	a, err := c.client()
	if err != nil {
		return err
	}
	s, _, err := resolveService(ctx, a, pos[0])
	if err != nil {
		return err
	}
	q.Set("service_id", s.ID)
	raw, _, err := a.do(ctx, http.MethodGet, "/api/v1/usage?"+q.Encode(), nil, nil)
	if err != nil {
		return fmt.Errorf("usage of %s: %w", s.Name, err)
	}
	if c.json() {
		return c.printJSON(raw)
	}
	var u map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&u); err != nil {
		return fmt.Errorf("usage of %s: unexpected answer: %w", s.Name, err)
	}
	tw := c.table()
	fmt.Fprintf(tw, "Service:\t%s (%s)\n", s.Name, s.ID)
	for _, f := range [][2]string{{"Base model", "base_model"}, {"Billing method", "billing_method"}} {
		if v, ok := u[f[1]]; ok {
			fmt.Fprintf(tw, "%s:\t%s\n", f[0], cell(f[1], v))
		}
	}
	// The answer's period when it says, else the one asked for.
	start, end := cell("from", u["from"]), cell("to", u["to"])
	if start == "-" {
		start = firstOf(q.Get("from"), "the start")
	}
	if end == "-" {
		end = firstOf(q.Get("to"), "now")
	}
	fmt.Fprintf(tw, "Period:\t%s to %s\n", start, end)
	if v, ok := u["deleted_at"]; ok {
		fmt.Fprintf(tw, "Deleted:\t%s (nothing after it is billed)\n", cell("deleted_at", v))
	}
	for _, f := range usageFields {
		if v, ok := u[f.key]; ok {
			text := cell(f.key, v)
			if cur, ok := u["currency"].(string); ok && f.key == "cost_micros" && cur != "" {
				text += " " + cur
			}
			fmt.Fprintf(tw, "%s:\t%s\n", f.label, text)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	rows, _ := u["data"].([]any)
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintln(c.stdout)
	return c.printRows(rows)
}

// usageFields are the counts of a usage answer and of its rows, in the
// order they are shown.
var usageFields = []struct{ key, label, column string }{
	{"requests", "Requests", "REQUESTS"},
	{"prompt_tokens", "Prompt tokens", "PROMPT TOKENS"},
	{"completion_tokens", "Completion tokens", "COMPLETION TOKENS"},
	{"total_tokens", "Total tokens", "TOTAL TOKENS"},
	{"instance_seconds", "Instance time", "INSTANCE TIME"},
	{"cost_micros", "Cost", "COST"},
}

// printRows prints a usage breakdown: the period or key first, the counts
// after, any other field at the end.
func (c *cli) printRows(rows []any) error {
	first := []string{"period_start", "api_key_id"}
	var counts []string
	for _, f := range usageFields {
		counts = append(counts, f.key)
	}
	seen := map[string]bool{}
	var others []string
	for _, r := range rows {
		m, _ := r.(map[string]any)
		for k := range m {
			if !seen[k] && !slices.Contains(first, k) && !slices.Contains(counts, k) {
				others = append(others, k)
			}
			seen[k] = true
		}
	}
	slices.Sort(others)
	var cols []string
	for _, k := range slices.Concat(first, counts, others) {
		if seen[k] {
			cols = append(cols, k)
		}
	}
	tw := c.table()
	for i, k := range cols {
		if i > 0 {
			fmt.Fprint(tw, "\t")
		}
		fmt.Fprint(tw, columnName(k))
	}
	fmt.Fprintln(tw)
	for _, r := range rows {
		m, _ := r.(map[string]any)
		for i, k := range cols {
			if i > 0 {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprint(tw, cell(k, m[k]))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// columnName is a usage field's table heading.
func columnName(key string) string {
	switch key {
	case "period_start":
		return "PERIOD"
	case "api_key_id":
		return "API KEY"
	}
	for _, f := range usageFields {
		if f.key == key {
			return f.column
		}
	}
	return strings.ToUpper(strings.ReplaceAll(key, "_", " "))
}

// cell formats a JSON value for a table: a cost in micros as a decimal,
// seconds as a duration.
func cell(key string, v any) string {
	switch v := v.(type) {
	case nil:
		return "-"
	case string:
		return v
	case json.Number:
		switch {
		case strings.HasSuffix(key, "_micros"):
			// Money stays in integers: micro-units split at the decimal point.
			if n, err := strconv.ParseUint(v.String(), 10, 64); err == nil {
				return fmt.Sprintf("%d.%06d", n/1_000_000, n%1_000_000)
			}
		case strings.HasSuffix(key, "_seconds"):
			if n, err := v.Int64(); err == nil {
				return (time.Duration(n) * time.Second).String()
			}
		}
		return v.String()
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// parseWhen reads a point in time: RFC 3339, a date (local midnight), or
// a duration before now.
func parseWhen(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", v, time.Local); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q: want an RFC 3339 time (2026-01-02T15:04:05Z), a date (2026-01-02) or a duration before now (90m, 24h)", v)
}
