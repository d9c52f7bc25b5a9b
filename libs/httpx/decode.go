package httpx

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"sync"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/libs/jsonscan"
)

// DecodeJSON reads a JSON object of at most limit bytes into v, a pointer
// to a struct, strictly: see Unmarshal. A body over the limit is
// errs.TooLarge; every other refusal is errs.Invalid.
func DecodeJSON(r *http.Request, v any, limit int64) error {
	data, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, limit))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return errs.E(errs.TooLarge, "request body is larger than %d bytes", limit)
		}
		return errs.Wrap(errs.Invalid, err, "read the request body")
	}
	return Unmarshal(data, v)
}

// Unmarshal decodes the JSON object in data into v, a pointer to a
// struct, and refuses anything it would otherwise pass over in silence: a
// key that names no field of v (with the field probably meant, if one is
// close), a key that names one only when case is ignored, a value of the
// wrong type, and data after the object. Each refusal is errs.Invalid
// with the parameter at fault, as a dotted path such as
// "autoscale.min_instances".
func Unmarshal(data []byte, v any) error {
	if len(bytes.TrimSpace(data)) == 0 {
		return errs.E(errs.Invalid, "request body is empty; expected a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return decodeError(err, reflect.TypeOf(v))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errs.E(errs.Invalid, "request body has data after the JSON value")
	}
	return CheckFields(data, reflect.TypeOf(v), "", RefuseUnknown)
}

// decodeError turns an encoding/json error for a value of type t into a
// 400 that says what was wrong where.
func decodeError(err error, t reflect.Type) error {
	typeErr, ok := errors.AsType[*json.UnmarshalTypeError](err)
	switch {
	case ok && typeErr.Field == "":
		return errs.E(errs.Invalid, "request body must be a JSON object, not %s", describeValue(typeErr.Value))
	case ok:
		want := describeType(typeErr.Type)
		if ft, found := fieldType(t, typeErr.Field); found && derefType(ft) != derefType(typeErr.Type) {
			// A wrong item inside an array or map: say what the whole is.
			part := "an item"
			if derefType(ft).Kind() == reflect.Map {
				part = "a value"
			}
			return errs.InvalidParam(typeErr.Field, "%s must be %s, but %s is %s", typeErr.Field, describeType(ft), part, describeValue(typeErr.Value))
		}
		return errs.InvalidParam(typeErr.Field, "%s must be %s, not %s", typeErr.Field, want, describeValue(typeErr.Value))
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errs.E(errs.Invalid, "request body is not valid JSON: it ends too soon")
	default:
		return errs.E(errs.Invalid, "request body is not valid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
}

// describeType names a Go type as a JSON value, with an article.
func describeType(t reflect.Type) string {
	if t == nil {
		return "a different type"
	}
	t = derefType(t)
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		if item := describeType(t.Elem()); item != "a different type" {
			return "an array of " + plural(item)
		}
		return "an array"
	case reflect.Map:
		if v := describeType(t.Elem()); v != "a different type" {
			return "an object of " + plural(v)
		}
		return "an object"
	case reflect.Struct:
		return "an object"
	}
	return "a different type"
}

// plural turns "an integer" into "integers".
func plural(s string) string {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "an "), "a ")
	switch {
	case s == "true or false":
		return "booleans"
	case strings.HasPrefix(s, "array"), strings.HasPrefix(s, "object"):
		word, rest, _ := strings.Cut(s, " ")
		return word + "s " + rest
	}
	return s + "s"
}

// describeValue names what encoding/json found: "a string", or the number
// itself where it is one that does not fit.
func describeValue(v string) string {
	switch v {
	case "string", "number":
		return "a " + v
	case "object", "array":
		return "an " + v
	case "bool":
		return "a boolean"
	}
	if n, ok := strings.CutPrefix(v, "number "); ok {
		return n
	}
	return v
}

func derefType(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// fieldType returns the type of the field at a dotted JSON path in t.
func fieldType(t reflect.Type, path string) (reflect.Type, bool) {
	for name := range strings.SplitSeq(path, ".") {
		t = derefType(t)
		if t.Kind() != reflect.Struct {
			return nil, false
		}
		f, ok := jsonFields(t).byName(name)
		if !ok {
			return nil, false
		}
		t = f.typ
	}
	return t, true
}

// Unknown says what CheckFields does with an object key that names no
// field.
type Unknown int

const (
	// RefuseUnknown refuses every key that names no field: the control
	// API's bodies hold only what it reads.
	RefuseUnknown Unknown = iota
	// PassUnknown lets keys that name no field through, for bodies that
	// reach an engine as sent (the OpenAI API); a key that names a field
	// only when case is ignored is still refused, since encoding/json
	// would read it as that field while the engine reads it as another.
	PassUnknown
)

// CheckFields checks the object keys in data, recursively, against the
// JSON fields of t: a key that names a field only when case is ignored is
// refused, and so is any other unknown key under RefuseUnknown. path is
// data's parameter path for errors ("" at the top). Values that are not
// of the shape t expects are left to the typed decode to report.
func CheckFields(data []byte, t reflect.Type, path string, unknown Unknown) error {
	t = derefType(t)
	switch {
	case t == reflect.TypeFor[json.RawMessage]():
		return nil
	case t.Kind() == reflect.Slice || t.Kind() == reflect.Array:
		// Each item is checked where it sits in data: nothing is copied, so
		// a body of megabytes costs no more than its own bytes.
		err := jsonscan.Elements(data, jsonscan.All(data), func(i int, item jsonscan.Span) error {
			return CheckFields(data[item.Start:item.End], t.Elem(), fmt.Sprintf("%s[%d]", path, i), unknown)
		})
		if errors.Is(err, jsonscan.ErrMalformed) {
			return nil // not an array of values: the typed decode reports it
		}
		return err
	case t.Kind() == reflect.Struct:
		keys, values, ok := objectKeys(data)
		if !ok {
			return nil
		}
		fields := jsonFields(t)
		for i, key := range keys {
			param := join(path, key)
			if f, ok := fields.byName(key); ok {
				if err := CheckFields(values[i], f.typ, param, unknown); err != nil {
					return err
				}
				continue
			}
			if name, ok := fields.foldedName(key); ok {
				return errs.InvalidParam(param, "unknown field %q: field names are case-sensitive; did you mean %q?", param, join(path, name))
			}
			if unknown == PassUnknown {
				continue
			}
			if name, ok := fields.closest(key); ok {
				return errs.InvalidParam(param, "unknown field %q; did you mean %q?", param, join(path, name))
			}
			if len(fields) == 0 {
				return errs.InvalidParam(param, "unknown field %q: this object takes no fields", param)
			}
			return errs.InvalidParam(param, "unknown field %q; the fields are %s", param, fields.names())
		}
	}
	return nil
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// objectKeys returns the keys of the JSON object in data, in order, with
// their values (parts of data, not copies); false when data is not an
// object.
func objectKeys(data []byte) ([]string, []json.RawMessage, bool) {
	if t := bytes.TrimSpace(data); len(t) == 0 || t[0] != '{' {
		return nil, nil, false
	}
	var keys []string
	var values []json.RawMessage
	err := jsonscan.Members(data, jsonscan.All(data), func(key string, v jsonscan.Span) error {
		keys, values = append(keys, key), append(values, data[v.Start:v.End])
		return nil
	})
	if err != nil {
		return nil, nil, false
	}
	return keys, values, true
}

// field is one JSON field of a struct.
type field struct {
	name string
	typ  reflect.Type
}

// fieldList is a struct's JSON fields in declaration order.
type fieldList []field

// fieldLists holds jsonFields' answer for each struct type it has read:
// every request a router check walks reads the same few types again.
var fieldLists sync.Map // reflect.Type → fieldList

// jsonFields returns the fields encoding/json reads into t: exported
// fields by their tag name or Go name, and the fields of embedded structs
// without a tag. The list is shared: callers must not change it.
func jsonFields(t reflect.Type) fieldList {
	if fs, ok := fieldLists.Load(t); ok {
		return fs.(fieldList)
	}
	fs := readFields(t)
	fieldLists.Store(t, fs)
	return fs
}

// readFields is jsonFields, read from t's fields by reflection.
func readFields(t reflect.Type) fieldList {
	var out fieldList
	for f := range t.Fields() {
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "-" {
			continue
		}
		if f.Anonymous && tag == "" && derefType(f.Type).Kind() == reflect.Struct {
			out = append(out, readFields(derefType(f.Type))...)
			continue
		}
		if !f.IsExported() {
			continue
		}
		out = append(out, field{name: cmp.Or(tag, f.Name), typ: f.Type})
	}
	return out
}

func (fs fieldList) byName(name string) (field, bool) {
	for _, f := range fs {
		if f.name == name {
			return f, true
		}
	}
	return field{}, false
}

// foldedName returns the field that key names when case is ignored, as
// encoding/json matches.
func (fs fieldList) foldedName(key string) (string, bool) {
	for _, f := range fs {
		if strings.EqualFold(f.name, key) {
			return f.name, true
		}
	}
	return "", false
}

// closest returns the field a mistyped key was probably meant to be: the
// nearest by edit distance within a third of the key's length (at least
// one edit; swapping two neighbours is one), else one whose name holds the
// key as whole words ("confirm" for "confirm_name"), or the key the name.
func (fs fieldList) closest(key string) (string, bool) {
	best, bestDist := "", -1
	k := strings.ToLower(key)
	for _, f := range fs {
		d := editDistance(k, strings.ToLower(f.name))
		if d <= max(1, len(key)/3) && (bestDist < 0 || d < bestDist) {
			best, bestDist = f.name, d
		}
	}
	if bestDist >= 0 {
		return best, true
	}
	for _, f := range fs {
		if hasWord(f.name, k) || hasWord(k, f.name) {
			return f.name, true
		}
	}
	return "", false
}

// hasWord reports whether word is one or more whole words of name, whose
// words are separated by underscores.
func hasWord(name, word string) bool {
	return len(word) >= 3 && len(word) < len(name) && strings.Contains("_"+name+"_", "_"+word+"_")
}

func (fs fieldList) names() string {
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.name
	}
	return strings.Join(names, ", ")
}

// editDistance is the optimal string alignment distance between a and
// b, in bytes: insertions, deletions, substitutions and swaps of two
// neighbours each count one.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
