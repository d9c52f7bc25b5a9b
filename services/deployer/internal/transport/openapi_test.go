package transport_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// openAPIFile is the control API's contract.
const openAPIFile = "../../api/openapi.json"

type openAPI struct {
	Paths map[string]map[string]struct {
		OperationID string                     `json:"operationId"`
		Responses   map[string]json.RawMessage `json:"responses"`
	} `json:"paths"`
}

// routePattern finds the routes the control API registers in this
// package's code: mux.HandleFunc("METHOD /api/v1/...", ...).
var routePattern = regexp.MustCompile(`HandleFunc\("([A-Z]+) (/api/v1/[^"]*)"`)

// registeredRoutes returns "METHOD path" for every route in the
// package's non-test sources.
func registeredRoutes(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range routePattern.FindAllStringSubmatch(string(b), -1) {
			out = append(out, m[1]+" "+m[2])
		}
	}
	sort.Strings(out)
	return out
}

func loadOpenAPI(t *testing.T) (openAPI, *jsonschema.Compiler) {
	t.Helper()
	b, err := os.ReadFile(openAPIFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc openAPI
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", openAPIFile, err)
	}
	raw, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource("mem://openapi.json", raw); err != nil {
		t.Fatal(err)
	}
	return doc, c
}

// TestOpenAPIDocumentsEveryRoute: the document and the code name the same
// routes, no more and no fewer.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	doc, _ := loadOpenAPI(t)
	var documented []string
	for path, ops := range doc.Paths {
		for method := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path)
		}
	}
	sort.Strings(documented)
	registered := registeredRoutes(t)
	if len(registered) < 10 {
		t.Fatalf("found only %d routes in the code: %v", len(registered), registered)
	}
	for _, r := range registered {
		if !slices.Contains(documented, r) {
			t.Errorf("route %s is served but not in %s", r, openAPIFile)
		}
	}
	for _, d := range documented {
		if !slices.Contains(registered, d) {
			t.Errorf("%s documents %s, which is not served", openAPIFile, d)
		}
	}
}

// TestOpenAPIMatchesHandlers drives every documented operation against
// the real handlers on a real JetStream, and checks each answer's status
// is documented for that operation and its body matches the documented
// schema.
func TestOpenAPIMatchesHandlers(t *testing.T) {
	doc, compiler := loadOpenAPI(t)
	e := newEnv(t)
	covered := map[string]bool{}

	check := func(secret, method, route, path, body string, want int) []byte {
		t.Helper()
		req, err := http.NewRequest(method, e.url+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if secret != "" {
			req.Header.Set("Authorization", "Bearer "+secret)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, got)
		}
		op, ok := doc.Paths[route][strings.ToLower(method)]
		if !ok {
			t.Fatalf("%s %s is not documented", method, route)
		}
		status := http.StatusText(want)
		if _, ok := op.Responses[itoa(want)]; !ok {
			t.Fatalf("%s %s answered %d (%s), which is not documented", method, route, want, status)
		}
		covered[method+" "+route] = true
		if len(got) == 0 {
			return got
		}
		ptr := "mem://openapi.json#/paths/" + strings.ReplaceAll(strings.ReplaceAll(route, "~", "~0"), "/", "~1") +
			"/" + strings.ToLower(method) + "/responses/" + itoa(want) + "/content/application~1json/schema"
		sch, err := compiler.Compile(ptr)
		if err != nil {
			t.Fatalf("%s %s %d: no JSON schema documented: %v", method, route, want, err)
		}
		inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(got))
		if err != nil {
			t.Fatalf("%s %s: answer is not JSON: %s", method, path, got)
		}
		if err := sch.Validate(inst); err != nil {
			t.Errorf("%s %s %d: answer does not match the document: %v\n%s", method, path, want, err, got)
		}
		return got
	}

	const svcs, one = "/api/v1/services", "/api/v1/services/{id}"
	check(e.alice, "GET", "/api/v1/catalog", "/api/v1/catalog", "", 200)
	check("", "GET", "/api/v1/catalog", "/api/v1/catalog", "", 401)
	var svc struct {
		ID string `json:"id"`
	}
	created := check(e.alice, "POST", svcs, svcs, `{"name":"docs","base_model":"qwen2.5-7b-instruct","instances":1}`, 201)
	if err := json.Unmarshal(created, &svc); err != nil {
		t.Fatal(err)
	}
	id := svc.ID
	check(e.alice, "POST", svcs, svcs, `{"name":"docs","base_model":"qwen2.5-7b-instruct"}`, 409)
	check(e.alice, "POST", svcs, svcs, `{"name":"Bad Name","base_model":"qwen2.5-7b-instruct"}`, 400)
	check(e.alice, "GET", svcs, svcs, "", 200)
	check(e.alice, "GET", svcs, svcs+"?status=asleep", "", 400)
	check(e.alice, "GET", one, svcs+"/"+id, "", 200)
	check(e.bob, "GET", one, svcs+"/"+id, "", 404)
	check(e.alice, "POST", one+"/scale", svcs+"/"+id+"/scale", `{"instances":2}`, 200)
	check(e.alice, "POST", one+"/scale", svcs+"/"+id+"/scale", `{"instances":-1}`, 400)
	check(e.alice, "PUT", one+"/autoscale", svcs+"/"+id+"/autoscale", `{"min_instances":0,"max_instances":3,"target_in_flight":2}`, 200)
	check(e.alice, "PUT", one+"/autoscale", svcs+"/"+id+"/autoscale", `{"max_instances":0}`, 400)
	check(e.alice, "POST", one+"/scale", svcs+"/"+id+"/scale", `{"instances":1}`, 409)
	check(e.alice, "DELETE", one+"/autoscale", svcs+"/"+id+"/autoscale", "", 200)
	check(e.alice, "PUT", one+"/routing", svcs+"/"+id+"/routing", `{"policy":"round-robin"}`, 200)
	check(e.alice, "PUT", one+"/routing", svcs+"/"+id+"/routing", `{"policy":"fastest"}`, 400)
	check(e.bob, "PUT", one+"/routing", svcs+"/"+id+"/routing", `{"policy":"round-robin"}`, 404)
	check(e.admin, "GET", one+"/instances", svcs+"/"+id+"/instances", "", 200)
	check(e.alice, "GET", one+"/instances", svcs+"/"+id+"/instances", "", 403)
	check(e.alice, "GET", one+"/events", svcs+"/"+id+"/events?limit=5", "", 200)
	check(e.alice, "GET", one+"/events", svcs+"/"+id+"/events?limit=0", "", 400)

	var key struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(check(e.alice, "POST", "/api/v1/keys", "/api/v1/keys", `{"name":"ci"}`, 201), &key); err != nil {
		t.Fatal(err)
	}
	check(e.alice, "POST", "/api/v1/keys", "/api/v1/keys", `{"name":""}`, 400)
	check(e.alice, "GET", "/api/v1/keys", "/api/v1/keys", "", 200)
	check(e.alice, "DELETE", "/api/v1/keys/{id}", "/api/v1/keys/"+key.ID, "", 204)
	check(e.alice, "DELETE", "/api/v1/keys/{id}", "/api/v1/keys/"+key.ID, "", 404)

	var org struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(check(e.admin, "POST", "/api/v1/owners", "/api/v1/owners", `{"kind":"organization","name":"docs-org"}`, 201), &org); err != nil {
		t.Fatal(err)
	}
	check(e.admin, "POST", "/api/v1/owners/{id}/keys", "/api/v1/owners/"+org.ID+"/keys", `{"name":"replacement"}`, 201)
	check(e.admin, "POST", "/api/v1/owners/{id}/keys", "/api/v1/owners/000000000000/keys", `{}`, 404)
	check(e.alice, "POST", "/api/v1/owners/{id}/keys", "/api/v1/owners/"+org.ID+"/keys", `{}`, 403)
	check(e.alice, "POST", "/api/v1/owners", "/api/v1/owners", `{"kind":"user","name":"x"}`, 403)
	check(e.admin, "GET", "/api/v1/owners", "/api/v1/owners", "", 200)
	check(e.alice, "GET", "/api/v1/me", "/api/v1/me", "", 200)
	check(e.admin, "GET", "/api/v1/me", "/api/v1/me", "", 200) // with the event stream

	// The model registry: register, list, read, deploy, and delete once
	// nothing uses it.
	const mods, mod = "/api/v1/models", "/api/v1/models/{name}"
	tiny := `{"name":"tiny","source":"file://` + e.models + `/tiny.gguf"}`
	check(e.alice, "POST", mods, mods, tiny, 201)
	check(e.alice, "POST", mods, mods, tiny, 409)
	check(e.alice, "POST", mods, mods, `{"name":"x","source":"ftp://host/x.gguf"}`, 400)
	check(e.alice, "POST", mods, mods, `{"name":"x","source":"ollama://qwen2.5:0.5b","public":true}`, 403)
	check(e.alice, "GET", mods, mods, "", 200)
	check(e.alice, "GET", "/api/v1/catalog", "/api/v1/catalog", "", 200)
	check(e.alice, "GET", mod, mods+"/tiny", "", 200)
	check(e.bob, "GET", mod, mods+"/tiny", "", 404)
	if err := json.Unmarshal(check(e.alice, "POST", svcs, svcs, `{"name":"tiny-chat","base_model":"tiny"}`, 201), &svc); err != nil {
		t.Fatal(err)
	}
	check(e.alice, "DELETE", mod, mods+"/tiny", "", 409)
	check(e.alice, "DELETE", mod, mods+"/qwen2.5-7b-instruct", "", 403)
	check(e.alice, "DELETE", one, svcs+"/"+svc.ID, `{"confirm_name":"tiny-chat"}`, 202)
	check(e.alice, "DELETE", mod, mods+"/tiny", "", 204)
	check(e.alice, "DELETE", mod, mods+"/tiny", "", 404)

	check(e.alice, "DELETE", one, svcs+"/"+id, `{"confirm_name":"wrong"}`, 400)
	check(e.alice, "DELETE", one, svcs+"/"+id, `{"confirm_name":"docs"}`, 202)

	// The watch stream: its first event is the snapshot.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+svcs+"/watch", nil)
	req.Header.Set("Authorization", "Bearer "+e.alice)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("watch: status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	buf := make([]byte, 4096)
	n, _ := io.ReadAtLeast(resp.Body, buf, 20)
	resp.Body.Close()
	if !strings.Contains(string(buf[:n]), "event: snapshot") {
		t.Errorf("watch stream began %q, want the snapshot event", buf[:n])
	}
	covered["GET "+svcs+"/watch"] = true

	for path, ops := range doc.Paths {
		for method := range ops {
			if !covered[strings.ToUpper(method)+" "+path] {
				t.Errorf("%s %s is documented but this test never calls it", strings.ToUpper(method), path)
			}
		}
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestOpenAPIRefusesUnknownFields: every operation the document gives a
// JSON body declares that body closed (additionalProperties: false, down
// through the objects it holds), and the handler keeps that promise: a
// field the document does not name is a documented 400 that names it.
func TestOpenAPIRefusesUnknownFields(t *testing.T) {
	b, err := os.ReadFile(openAPIFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]struct {
			RequestBody *struct {
				Content map[string]struct {
					Schema map[string]any `json:"schema"`
				} `json:"content"`
			} `json:"requestBody"`
			Responses map[string]json.RawMessage `json:"responses"`
		} `json:"paths"`
		Components struct {
			Schemas map[string]map[string]any `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	resolve := func(s map[string]any) map[string]any {
		if ref, ok := s["$ref"].(string); ok {
			return doc.Components.Schemas[strings.TrimPrefix(ref, "#/components/schemas/")]
		}
		return s
	}
	// closed reports the first object schema under s that allows fields
	// it does not name.
	var closed func(s map[string]any, at string) error
	closed = func(s map[string]any, at string) error {
		s = resolve(s)
		if s["type"] == "object" || s["properties"] != nil {
			if s["additionalProperties"] != false {
				return fmt.Errorf("%s: an object without additionalProperties: false", at)
			}
			props, _ := s["properties"].(map[string]any)
			for name, p := range props {
				if err := closed(p.(map[string]any), at+"."+name); err != nil {
					return err
				}
			}
		}
		if items, ok := s["items"].(map[string]any); ok {
			return closed(items, at+"[]")
		}
		return nil
	}

	e := newEnv(t)
	svc := e.create(e.alice, "docs")
	var org struct {
		ID string `json:"id"`
	}
	if resp := e.do(e.admin, "POST", "/api/v1/owners", `{"kind":"organization","name":"docs-org"}`, &org); resp.StatusCode != 201 {
		t.Fatalf("create owner: status %d", resp.StatusCode)
	}
	// ids fills each route's {id} with something that exists, so a refusal
	// is about the body and not the path.
	ids := map[string]string{
		"/api/v1/services/{id}":           svc.ID,
		"/api/v1/services/{id}/scale":     svc.ID,
		"/api/v1/services/{id}/autoscale": svc.ID,
		"/api/v1/services/{id}/routing":   svc.ID,
		"/api/v1/owners/{id}/keys":        org.ID,
	}
	const unknown = "unknown_field_for_the_test"
	withBody := 0
	for route, ops := range doc.Paths {
		for method, op := range ops {
			if op.RequestBody == nil {
				continue
			}
			withBody++
			name := strings.ToUpper(method) + " " + route
			media, ok := op.RequestBody.Content["application/json"]
			if !ok {
				t.Errorf("%s: the request body is not application/json", name)
				continue
			}
			if err := closed(media.Schema, name+" body"); err != nil {
				t.Errorf("%v", err)
			}
			if _, ok := op.Responses["400"]; !ok {
				t.Errorf("%s takes a body but documents no 400", name)
			}
			path := route
			if strings.Contains(route, "{id}") {
				id, ok := ids[route]
				if !ok {
					t.Errorf("%s: give this test an id for the route", name)
					continue
				}
				path = strings.ReplaceAll(route, "{id}", id)
			}
			var got errorBody
			resp := e.do(e.admin, strings.ToUpper(method), path, `{"`+unknown+`":1}`, &got)
			param := ""
			if got.Error.Param != nil {
				param = *got.Error.Param
			}
			if resp.StatusCode != 400 || param != unknown || !strings.Contains(got.Error.Message, `unknown field "`+unknown+`"`) {
				t.Errorf("%s with an unknown field: status %d, param %q, message %q; want 400 naming %s",
					name, resp.StatusCode, param, got.Error.Message, unknown)
			}
		}
	}
	if withBody < 7 {
		t.Errorf("found %d operations with a body in %s, want every one (7 or more)", withBody, openAPIFile)
	}
}
