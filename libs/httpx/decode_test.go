package httpx_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/httpx"
)

type policy struct {
	MinInstances     int `json:"min_instances"`
	MaxInstances     int `json:"max_instances"`
	TargetInFlight   int `json:"target_in_flight"`
	ScaleToZeroAfter int `json:"scale_to_zero_after_seconds,omitempty"`
}

type base struct {
	Owner string `json:"owner"`
}

type createRequest struct {
	base
	Name      string            `json:"name"`
	BaseModel string            `json:"base_model"`
	Instances int               `json:"instances"`
	Services  []string          `json:"services"`
	Weights   []float64         `json:"weights"`
	Autoscale *policy           `json:"autoscale"`
	Stages    []policy          `json:"stages"`
	Labels    map[string]string `json:"labels"`
	Extra     json.RawMessage   `json:"extra"`
	Internal  string            `json:"-"`
	Untagged  bool
	hidden    int
}

// TestUnmarshal: what the control API refuses and how it says so.
func TestUnmarshal(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		wantParam string
		wantMsg   string // the whole message
	}{
		{"a near miss", `{"name":"a","instance":3}`, "instance", `unknown field "instance"; did you mean "instances"?`},
		{"a transposition", `{"nmae":"a"}`, "nmae", `unknown field "nmae"; did you mean "name"?`},
		{"a word of a field", `{"base":"x"}`, "base", `unknown field "base"; did you mean "base_model"?`},
		{"nothing close", `{"gpu":"h100"}`, "gpu",
			`unknown field "gpu"; the fields are owner, name, base_model, instances, services, weights, autoscale, stages, labels, extra, Untagged`},
		{"a field named only by case", `{"Instances":3}`, "Instances",
			`unknown field "Instances": field names are case-sensitive; did you mean "instances"?`},
		{"an embedded struct's field by case", `{"OWNER":"x"}`, "OWNER",
			`unknown field "OWNER": field names are case-sensitive; did you mean "owner"?`},
		{"the first unknown key in the body", `{"zzz":1,"aaa":2}`, "zzz", ""},
		{"nested under a pointer", `{"autoscale":{"max_instance":2}}`, "autoscale.max_instance",
			`unknown field "autoscale.max_instance"; did you mean "autoscale.max_instances"?`},
		{"in an array of objects", `{"stages":[{"max_instances":1},{"target_inflight":2}]}`, "stages[1].target_inflight",
			`unknown field "stages[1].target_inflight"; did you mean "stages[1].target_in_flight"?`},
		{"a field tagged -", `{"Internal":"x"}`, "Internal", ""},
		{"an unexported field", `{"hidden":1}`, "hidden", ""},

		{"a string for an integer", `{"instances":"3"}`, "instances", "instances must be an integer, not a string"},
		{"a fraction for an integer", `{"instances":2.5}`, "instances", "instances must be an integer, not 2.5"},
		{"too large an integer", `{"instances":99999999999999999999}`, "instances", "instances must be an integer, not 99999999999999999999"},
		{"a boolean for a string", `{"name":true}`, "name", "name must be a string, not a boolean"},
		{"an object for a string", `{"name":{}}`, "name", "name must be a string, not an object"},
		{"a string for an array", `{"services":"a"}`, "services", "services must be an array of strings, not a string"},
		{"a wrong item", `{"weights":[1,"x"]}`, "weights", "weights must be an array of numbers, but an item is a string"},
		{"a string for an object", `{"autoscale":"on"}`, "autoscale", "autoscale must be an object, not a string"},
		{"a nested wrong type", `{"autoscale":{"max_instances":"2"}}`, "autoscale.max_instances", "autoscale.max_instances must be an integer, not a string"},
		{"a wrong map value", `{"labels":{"a":1}}`, "labels", "labels must be an object of strings, but a value is a number"},

		{"not an object", `[1]`, "", "request body must be a JSON object, not an array"},
		{"a bare string", `"x"`, "", "request body must be a JSON object, not a string"},
		{"empty", " \n", "", "request body is empty; expected a JSON object"},
		{"cut short", `{"name":`, "", "request body is not valid JSON: it ends too soon"},
		{"not JSON", `{name:1}`, "", ""},
		{"two objects", `{"name":"a"} {"name":"b"}`, "", "request body has data after the JSON value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var v createRequest
			err := httpx.Unmarshal([]byte(tc.body), &v)
			e, ok := errs.As(err)
			if !ok || e.Kind != errs.Invalid {
				t.Fatalf("Unmarshal(%s) = %v, want an Invalid error", tc.body, err)
			}
			if e.Param != tc.wantParam {
				t.Errorf("param = %q, want %q (message %q)", e.Param, tc.wantParam, e.Msg)
			}
			if tc.wantMsg != "" && e.Msg != tc.wantMsg {
				t.Errorf("message = %q\nwant      %q", e.Msg, tc.wantMsg)
			}
			if e.Msg == "" || strings.HasPrefix(e.Msg, " ") {
				t.Errorf("message %q is empty or starts without a subject", e.Msg)
			}
		})
	}
}

// TestUnmarshalAccepts: every known field, in any nesting, with free keys
// where the type allows them.
func TestUnmarshalAccepts(t *testing.T) {
	body := `{"owner":"o","name":"a","base_model":"m","instances":2,"services":["s"],"weights":[0.5],
		"autoscale":{"min_instances":0,"max_instances":3,"target_in_flight":2,"scale_to_zero_after_seconds":60},
		"stages":[{"max_instances":1}],"labels":{"Any":"key","ANY":"x"},"extra":{"whatever":[1,{"Name":2}]},"Untagged":true,
		"autoscale":null}`
	var got createRequest
	if err := httpx.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	if got.Name != "a" || got.Owner != "o" || got.Instances != 2 || len(got.Stages) != 1 || got.Labels["Any"] != "key" || !got.Untagged {
		t.Errorf("decoded %+v", got)
	}
}

// TestCheckFieldsPassUnknown: the OpenAI API's policy lets unknown keys
// through to the engine but still refuses one that matches a field only
// by case.
func TestCheckFieldsPassUnknown(t *testing.T) {
	typ := reflect.TypeFor[createRequest]()
	if err := httpx.CheckFields([]byte(`{"name":"a","logit_bias":{"1":2},"autoscale":{"anything":1}}`), typ, "", httpx.PassUnknown); err != nil {
		t.Errorf("unknown keys: %v, want them passed", err)
	}
	err := httpx.CheckFields([]byte(`{"name":"a","autoscale":{"Max_Instances":1}}`), typ, "", httpx.PassUnknown)
	if e, ok := errs.As(err); !ok || e.Param != "autoscale.Max_Instances" || !strings.Contains(e.Msg, "case-sensitive") {
		t.Errorf("a case variant: %v, want it refused naming autoscale.Max_Instances", err)
	}
	err = httpx.CheckFields([]byte(`{"stages":[{}, {"MAX_INSTANCES":1}]}`), typ, "messages", httpx.PassUnknown)
	if e, ok := errs.As(err); !ok || e.Param != "messages.stages[1].MAX_INSTANCES" {
		t.Errorf("a case variant under a path: %v, want param messages.stages[1].MAX_INSTANCES", err)
	}
}
