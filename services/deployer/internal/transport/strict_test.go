package transport_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/state"
)

// errorBody is an OpenAI error answer with its message.
type errorBody struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
	} `json:"error"`
}

// TestStrictBodies: every control API body is decoded strictly. A field
// the API does not know, a wrong type and a value out of range are each a
// 400 that names the field (and, for a near miss, the field meant), and
// the request changes nothing.
func TestStrictBodies(t *testing.T) {
	e := newEnv(t)
	s := e.create(e.alice, "chat")
	svc := "/api/v1/services/" + s.ID
	var org struct {
		ID string `json:"id"`
	}
	if resp := e.do(e.admin, "POST", "/api/v1/owners", `{"kind":"organization","name":"acme"}`, &org); resp.StatusCode != 201 {
		t.Fatalf("create owner: status %d", resp.StatusCode)
	}
	published := len(e.pub.events)

	tests := []struct {
		name         string
		secret       string
		method, path string
		body         string
		wantParam    string
		wantInMsg    string
	}{
		// The example: a typo that used to deploy one instance.
		{"create: instance for instances", e.alice, "POST", "/api/v1/services",
			`{"name":"typo","base_model":"qwen2.5-7b-instruct","task":"text-generation","instance":3,"billing_method":"per-token"}`,
			"instance", `unknown field "instance"; did you mean "instances"?`},
		{"create: a field matching only by case", e.alice, "POST", "/api/v1/services",
			`{"name":"typo","base_model":"qwen2.5-7b-instruct","Instances":3}`,
			"Instances", `did you mean "instances"?`},
		{"create: a field nothing is close to", e.alice, "POST", "/api/v1/services",
			`{"name":"typo","base_model":"qwen2.5-7b-instruct","gpu":"h100"}`,
			"gpu", `unknown field "gpu"; the fields are name, base_model, task, instances, billing_method, autoscale`},
		{"create: nested in autoscale", e.alice, "POST", "/api/v1/services",
			`{"name":"typo","base_model":"qwen2.5-7b-instruct","autoscale":{"max_instances":2,"min_instance":1}}`,
			"autoscale.min_instance", `did you mean "autoscale.min_instances"?`},
		{"create: wrong type", e.alice, "POST", "/api/v1/services",
			`{"name":"typo","base_model":"qwen2.5-7b-instruct","instances":"3"}`,
			"instances", "instances must be an integer, not a string"},
		{"create: a fraction", e.alice, "POST", "/api/v1/services",
			`{"name":"typo","base_model":"qwen2.5-7b-instruct","instances":1.5}`,
			"instances", "instances must be an integer, not 1.5"},
		{"create: out of range", e.alice, "POST", "/api/v1/services",
			`{"name":"typo","base_model":"qwen2.5-7b-instruct","instances":65}`,
			"instances", "instances must be between 1 and 64"},
		{"create: beyond any integer", e.alice, "POST", "/api/v1/services",
			`{"name":"typo","base_model":"qwen2.5-7b-instruct","instances":1e30}`,
			"instances", "instances must be an integer, not 1e30"},

		{"scale: instance for instances", e.alice, "POST", svc + "/scale", `{"instance":3}`,
			"instance", `unknown field "instance"; did you mean "instances"?`},
		{"scale: wrong type", e.alice, "POST", svc + "/scale", `{"instances":true}`,
			"instances", "instances must be an integer, not a boolean"},
		{"scale: out of range", e.alice, "POST", svc + "/scale", `{"instances":-1}`,
			"instances", "instances must be between 0 and 64"},

		{"autoscale: a near miss", e.alice, "PUT", svc + "/autoscale", `{"max_instances":3,"target_inflight":2}`,
			"target_inflight", `did you mean "target_in_flight"?`},
		{"autoscale: wrong type", e.alice, "PUT", svc + "/autoscale", `{"max_instances":"3"}`,
			"max_instances", "max_instances must be an integer, not a string"},
		{"autoscale: out of range, named as sent", e.alice, "PUT", svc + "/autoscale", `{"max_instances":3,"target_in_flight":0,"min_instances":-1}`,
			"min_instances", "min_instances must be between 0 and 64"},

		{"delete: a near miss", e.alice, "DELETE", svc, `{"confirm":"chat"}`,
			"confirm", `did you mean "confirm_name"?`},
		{"delete: wrong type", e.alice, "DELETE", svc, `{"confirm_name":["chat"]}`,
			"confirm_name", "confirm_name must be a string, not an array"},

		{"keys: a near miss", e.alice, "POST", "/api/v1/keys", `{"name":"ci","service":["x"]}`,
			"service", `did you mean "services"?`},
		{"keys: wrong type", e.alice, "POST", "/api/v1/keys", `{"name":"ci","services":"x"}`,
			"services", "services must be an array of strings, not a string"},
		{"keys: an array of the wrong items", e.alice, "POST", "/api/v1/keys", `{"name":"ci","services":[1]}`,
			"services", "services must be an array of strings, but an item is a number"},

		{"owners: a near miss", e.admin, "POST", "/api/v1/owners", `{"kind":"user","nmae":"zoe"}`,
			"nmae", `did you mean "name"?`},
		{"owners: wrong type", e.admin, "POST", "/api/v1/owners", `{"kind":1,"name":"zoe"}`,
			"kind", "kind must be a string, not a number"},
		{"owner keys: a near miss", e.admin, "POST", "/api/v1/owners/" + org.ID + "/keys", `{"label":"x"}`,
			"label", `unknown field "label"; the fields are name`},

		{"not an object", e.alice, "POST", "/api/v1/keys", `["ci"]`, "", "must be a JSON object"},
		{"two values", e.alice, "POST", "/api/v1/keys", `{"name":"ci"}{"name":"ci2"}`, "", "after the JSON value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got errorBody
			resp := e.do(tc.secret, tc.method, tc.path, tc.body, &got)
			if resp.StatusCode != 400 {
				t.Fatalf("status = %d, want 400 (%+v)", resp.StatusCode, got)
			}
			param := ""
			if got.Error.Param != nil {
				param = *got.Error.Param
			}
			if param != tc.wantParam {
				t.Errorf("param = %q, want %q (message %q)", param, tc.wantParam, got.Error.Message)
			}
			if !strings.Contains(got.Error.Message, tc.wantInMsg) {
				t.Errorf("message = %q, want it to contain %q", got.Error.Message, tc.wantInMsg)
			}
			if got.Error.Type != "invalid_request_error" {
				t.Errorf("type = %q, want invalid_request_error", got.Error.Type)
			}
		})
	}

	// Nothing was created, scaled, deleted or changed.
	if got := len(e.pub.events); got != published {
		t.Errorf("refused requests published %d events", got-published)
	}
	var now state.Service
	e.do(e.alice, "GET", svc, "", &now)
	if now.Instances != s.Instances || now.Autoscale != nil || now.Status != s.Status {
		t.Errorf("service after refused requests = %+v, want it as created", now)
	}
	var list []json.RawMessage
	e.do(e.alice, "GET", "/api/v1/services", "", &list)
	if len(list) != 1 {
		t.Errorf("services after refused creates = %d, want 1", len(list))
	}
	var keys []json.RawMessage
	e.do(e.alice, "GET", "/api/v1/keys", "", &keys)
	if len(keys) != 1 {
		t.Errorf("keys after refused creates = %d, want alice's own", len(keys))
	}
}
