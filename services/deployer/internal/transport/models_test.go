package transport_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/gguftest"
	"github.com/modelport/modelport/libs/state"
)

type model struct {
	Name          string   `json:"name"`
	Owner         string   `json:"owner"`
	Source        string   `json:"source"`
	Format        string   `json:"format"`
	Engine        string   `json:"engine"`
	Tasks         []string `json:"tasks"`
	GPUs          int      `json:"gpus"`
	ContextLength int      `json:"context_length"`
	MemoryBytes   int64    `json:"memory_bytes"`
	Inspection    *struct {
		Architecture string `json:"architecture"`
		Parameters   int64  `json:"parameters"`
		Quantization string `json:"quantization"`
		TensorBytes  int64  `json:"tensor_bytes"`
		MemoryBytes  int64  `json:"memory_bytes"`
	} `json:"inspection"`
}

type apiErrorMsg struct {
	Error struct {
		Message string  `json:"message"`
		Param   *string `json:"param"`
	} `json:"error"`
}

func (a apiErrorMsg) param() string {
	if a.Error.Param == nil {
		return ""
	}
	return *a.Error.Param
}

// TestModelsHTTP: an owner registers a GGUF file from the model store,
// sees it with what its header says, in GET /api/v1/models and the
// catalog, and deploys it; another owner sees none of it.
func TestModelsHTTP(t *testing.T) {
	e := newEnv(t)
	src := "file://" + filepath.Join(e.models, "tiny.gguf")

	var m model
	if resp := e.do(e.alice, "POST", "/api/v1/models", `{"name":"tiny","source":"`+src+`"}`, &m); resp.StatusCode != 201 || resp.Header.Get("Location") != "/api/v1/models/tiny" {
		t.Fatalf("register: status %d, location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if m.Source != src || m.Format != "gguf" || m.Engine != "ollama" || m.GPUs != 0 || m.ContextLength != 2048 ||
		m.Inspection == nil || m.Inspection.Architecture != "llama" || m.Inspection.Quantization != "F16" || m.Inspection.Parameters == 0 ||
		m.MemoryBytes != m.Inspection.MemoryBytes || m.MemoryBytes <= m.Inspection.TensorBytes {
		t.Errorf("registered %+v, inspection %+v", m, m.Inspection)
	}
	var me struct {
		OwnerID string `json:"owner_id"`
	}
	e.do(e.alice, "GET", "/api/v1/me", "", &me)
	if m.Owner != me.OwnerID {
		t.Errorf("owner %q, want the caller's %q", m.Owner, me.OwnerID)
	}

	for _, path := range []string{"/api/v1/models", "/api/v1/catalog"} {
		var list []model
		e.do(e.alice, "GET", path, "", &list)
		i := slices.IndexFunc(list, func(x model) bool { return x.Name == "tiny" })
		if i < 0 || list[i].Owner != me.OwnerID || !slices.ContainsFunc(list, func(x model) bool { return x.Name == "qwen2.5-7b-instruct" && x.Owner == "catalog" }) {
			t.Errorf("alice's %s: %+v", path, list)
		}
		e.do(e.bob, "GET", path, "", &list)
		if slices.ContainsFunc(list, func(x model) bool { return x.Name == "tiny" }) {
			t.Errorf("bob's %s shows alice's model", path)
		}
	}
	if resp := e.do(e.bob, "GET", "/api/v1/models/tiny", "", nil); resp.StatusCode != 404 {
		t.Errorf("bob reads alice's model: %d", resp.StatusCode)
	}

	// Deploying it: the service runs the model's engine and carries it.
	var s state.Service
	if resp := e.do(e.alice, "POST", "/api/v1/services", `{"name":"tiny-chat","base_model":"tiny","instances":2}`, &s); resp.StatusCode != 201 {
		t.Fatalf("deploy the model: status %d", resp.StatusCode)
	}
	if s.BaseModel != "tiny" || s.Engine != "ollama" || s.Model == nil || s.Model.Source != src || s.Model.Owner != me.OwnerID || s.Model.MemoryBytes != m.MemoryBytes {
		t.Errorf("service %+v, model %+v", s, s.Model)
	}
	var ae apiErrorMsg
	if resp := e.do(e.bob, "POST", "/api/v1/services", `{"name":"stolen","base_model":"tiny"}`, &ae); resp.StatusCode != 400 || ae.param() != "base_model" {
		t.Errorf("bob deploys alice's model: %d, param %q", resp.StatusCode, ae.param())
	}

	// In use: deleting it names the service.
	if resp := e.do(e.alice, "DELETE", "/api/v1/models/tiny", "", &ae); resp.StatusCode != 409 || !strings.Contains(ae.Error.Message, s.AccessName) {
		t.Errorf("delete a model in use: %d %q", resp.StatusCode, ae.Error.Message)
	}
	if resp := e.do(e.bob, "DELETE", "/api/v1/models/tiny", "", nil); resp.StatusCode != 404 {
		t.Errorf("bob deletes alice's model: %d", resp.StatusCode)
	}
}

// TestModelsHTTPRefuses: bad input is a 400 naming the field, and nothing
// is stored.
func TestModelsHTTPRefuses(t *testing.T) {
	e := newEnv(t)
	notGGUF := filepath.Join(e.models, "readme.gguf")
	if err := os.WriteFile(notGGUF, []byte("# not weights\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	header, _ := gguftest.Tiny().Header()
	cut := filepath.Join(e.models, "cut.gguf")
	if err := os.WriteFile(cut, header[:300], 0o644); err != nil {
		t.Fatal(err)
	}
	tiny := "file://" + filepath.Join(e.models, "tiny.gguf")
	for _, tc := range []struct{ body, param, want string }{
		{`{"name":"m","source":"ftp://example.com/m.gguf"}`, "source", "unknown source scheme"},
		{`{"name":"m","source":"file://models/m.gguf"}`, "source", "not an absolute path"},
		{`{"name":"m","source":"file://` + notGGUF + `"}`, "source", "is not a GGUF file"},
		{`{"name":"m","source":"file://` + cut + `"}`, "source", "is not a valid GGUF file"},
		{`{"name":"m","source":"file:///etc/hostname"}`, "source", "outside the model store"},
		{`{"name":"m","source":"` + tiny + `","tasks":["image-generation"]}`, "tasks", "cannot serve image-generation"},
		{`{"name":"m","adapter":"` + tiny + `"}`, "base", "needs the model it was trained on"},
		{`{"name":"m","source":"` + tiny + `","gpu":1}`, "gpu", `unknown field "gpu"`},
		{`{"name":"m","source":"` + tiny + `","gpus":"one"}`, "gpus", "gpus must be"},
		{`{"name":"M","source":"` + tiny + `"}`, "name", "lowercase"},
	} {
		var ae apiErrorMsg
		resp := e.do(e.alice, "POST", "/api/v1/models", tc.body, &ae)
		if resp.StatusCode != 400 || ae.param() != tc.param || !strings.Contains(ae.Error.Message, tc.want) {
			t.Errorf("%s: %d, param %q, %q; want 400, %s, %q", tc.body, resp.StatusCode, ae.param(), ae.Error.Message, tc.param, tc.want)
		}
	}
	var list []model
	e.do(e.alice, "GET", "/api/v1/models", "", &list)
	if slices.ContainsFunc(list, func(m model) bool { return m.Owner != "catalog" }) {
		t.Errorf("refused registrations were stored: %+v", list)
	}
}

// TestPublicModels: an admin registers a model for everyone; each owner
// sees and deploys it, and only an admin deletes it.
func TestPublicModels(t *testing.T) {
	e := newEnv(t)
	var m model
	if resp := e.do(e.admin, "POST", "/api/v1/models", `{"name":"shared","source":"ollama://qwen2.5:0.5b","public":true}`, &m); resp.StatusCode != 201 || m.Owner != "public" {
		t.Fatalf("admin registers for everyone: %d, %+v", resp.StatusCode, m)
	}
	for _, k := range []string{e.alice, e.bob} {
		if resp := e.do(k, "GET", "/api/v1/models/shared", "", &m); resp.StatusCode != 200 || m.Owner != "public" || m.Engine != "ollama" {
			t.Errorf("read the public model: %d %+v", resp.StatusCode, m)
		}
	}
	if resp := e.do(e.bob, "POST", "/api/v1/services", `{"name":"bot","base_model":"shared"}`, nil); resp.StatusCode != 201 {
		t.Errorf("deploy the public model: %d", resp.StatusCode)
	}
	if resp := e.do(e.bob, "DELETE", "/api/v1/models/shared", "", nil); resp.StatusCode != 403 {
		t.Errorf("an owner deletes a public model: %d", resp.StatusCode)
	}
	if resp := e.do(e.alice, "POST", "/api/v1/models", `{"name":"shared","source":"ollama://llama3.2:1b"}`, nil); resp.StatusCode != 409 {
		t.Errorf("an owner takes a public model's name: %d", resp.StatusCode)
	}
}
