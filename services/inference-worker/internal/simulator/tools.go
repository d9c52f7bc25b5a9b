package simulator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/fnv"
)

// tool is a tool definition in a chat request.
type tool struct {
	Type     string `json:"type"`
	Function struct {
		Name       string          `json:"name"`
		Parameters json.RawMessage `json:"parameters"`
	} `json:"function"`
}

// toolSpec is a validated tool with the arguments the simulator calls it
// with.
type toolSpec struct {
	name      string
	arguments string
}

// toolCall is a function call in an answer. Index is set in streamed
// deltas only; a delta that continues a call carries only Index and
// Function.Arguments.
type toolCall struct {
	Index    *int         `json:"index,omitempty"`
	ID       string       `json:"id,omitempty"`
	Type     string       `json:"type,omitempty"`
	Function functionCall `json:"function"`
}

type functionCall struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

// parseTools validates tools and works out each one's arguments.
func parseTools(tools []tool) ([]toolSpec, *requestError) {
	out := make([]toolSpec, 0, len(tools))
	for i, t := range tools {
		if t.Type != "function" {
			return nil, invalid("tools", "tools[%d].type must be function, not %q", i, t.Type)
		}
		if t.Function.Name == "" {
			return nil, invalid("tools", "tools[%d].function.name is required", i)
		}
		args, err := arguments(t.Function.Parameters)
		if err != nil {
			return nil, invalid("tools", "tools[%d].function.parameters: %v", i, err)
		}
		out = append(out, toolSpec{name: t.Function.Name, arguments: args})
	}
	return out, nil
}

// parseToolChoice reads tool_choice: absent, "none", "auto", "required" or
// {"type":"function","function":{"name":...}} naming one of tools.
func parseToolChoice(raw json.RawMessage, tools []toolSpec) (toolChoice, string, *requestError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		if len(tools) == 0 {
			return toolsNone, "", nil
		}
		return toolsAuto, "", nil
	}
	var mode string
	if err := json.Unmarshal(raw, &mode); err == nil {
		switch mode {
		case "none":
			return toolsNone, "", nil
		case "auto":
			return toolsAuto, "", nil
		case "required":
			if len(tools) == 0 {
				return 0, "", invalid("tool_choice", `tool_choice "required" needs tools`)
			}
			return toolsRequired, "", nil
		}
		return 0, "", invalid("tool_choice", `tool_choice must be "none", "auto", "required" or a function, not %q`, mode)
	}
	var named struct {
		Type     string `json:"type"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if err := json.Unmarshal(raw, &named); err != nil || named.Type != "function" || named.Function.Name == "" {
		return 0, "", invalid("tool_choice", `tool_choice must be "none", "auto", "required" or {"type":"function","function":{"name":...}}`)
	}
	for _, t := range tools {
		if t.name == named.Function.Name {
			return toolsNamed, t.name, nil
		}
	}
	return 0, "", invalid("tool_choice", "tool_choice names function %q, which is not among the tools", named.Function.Name)
}

// schema is the part of a JSON Schema the simulator fills in.
type schema struct {
	Properties map[string]json.RawMessage `json:"properties"`
	Required   []string                   `json:"required"`
}

type propertySchema struct {
	Type json.RawMessage   `json:"type"`
	Enum []json.RawMessage `json:"enum"`
}

// arguments returns a JSON object that fills each required property of
// the parameters schema, in the order required lists them: the first enum
// value where there is an enum, else "simulated" for strings (and
// properties without a type), 1 for integers and numbers, true for
// booleans, [] for arrays, {} for objects and null for null.
func arguments(parameters json.RawMessage) (string, error) {
	parameters = bytes.TrimSpace(parameters)
	if len(parameters) == 0 || string(parameters) == "null" {
		return "{}", nil
	}
	var sc schema
	if err := json.Unmarshal(parameters, &sc); err != nil {
		return "", fmt.Errorf("not a JSON Schema object: %v", err)
	}
	var b bytes.Buffer
	b.WriteByte('{')
	seen := map[string]bool{}
	for _, name := range sc.Required {
		if seen[name] {
			continue
		}
		seen[name] = true
		var prop propertySchema
		if raw, ok := sc.Properties[name]; ok {
			if err := json.Unmarshal(raw, &prop); err != nil {
				return "", fmt.Errorf("property %q: %v", name, err)
			}
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		key, _ := json.Marshal(name)
		b.Write(key)
		b.WriteByte(':')
		b.WriteString(exampleValue(prop))
	}
	b.WriteByte('}')
	return b.String(), nil
}

// exampleValue is the JSON value arguments gives a property.
func exampleValue(p propertySchema) string {
	if len(p.Enum) > 0 {
		var c bytes.Buffer
		if json.Compact(&c, p.Enum[0]) == nil {
			return c.String()
		}
	}
	var typ string
	if json.Unmarshal(p.Type, &typ) != nil {
		// A list of types: the first that is not null.
		var types []string
		_ = json.Unmarshal(p.Type, &types)
		for _, t := range types {
			if typ = t; t != "null" {
				break
			}
		}
	}
	switch typ {
	case "integer", "number":
		return "1"
	case "boolean":
		return "true"
	case "array":
		return "[]"
	case "object":
		return "{}"
	case "null":
		return "null"
	default:
		return `"simulated"`
	}
}

// callTool returns the call choice seed makes under p's tool choice.
func callTool(p *chatParams, seed uint64) toolCall {
	t := p.tools[seed%uint64(len(p.tools))]
	if p.toolChoice == toolsNamed {
		for _, c := range p.tools {
			if c.name == p.toolName {
				t = c
				break
			}
		}
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%016x%s", seed, t.name)
	return toolCall{
		ID:       fmt.Sprintf("call_%016x%08x", h.Sum64(), uint32(seed)),
		Type:     "function",
		Function: functionCall{Name: t.name, Arguments: t.arguments},
	}
}
