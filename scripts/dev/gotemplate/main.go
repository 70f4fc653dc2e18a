// Command gotemplate-oracle renders a corpus of templates with Go's own text/template,
// so that chaosbus's Python engine can be compared with the real thing.
//
// It reads a JSON list of cases ({"name", "template", "data"}) on standard input and
// writes a JSON list of results on standard output: each case's output, or the phase
// ("parse" or "exec") and message of its error. It is a development tool only: the
// results are committed as test fixtures and nothing at run time needs Go.
//
// Templates are executed as Chaos Mesh v0.9 executed sidecar templates, with
// missingkey=error, plus the two sprig functions those templates may use (quote and
// default), written here from sprig's documentation.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"strings"
	"text/template"
)

type testCase struct {
	Name     string          `json:"name"`
	Template string          `json:"template"`
	Data     json.RawMessage `json:"data"`
}

type failure struct {
	Phase   string `json:"phase"`
	Message string `json:"message"`
}

type result struct {
	Name   string   `json:"name"`
	Output *string  `json:"output,omitempty"`
	Error  *failure `json:"error,omitempty"`
}

type report struct {
	Go      string   `json:"go"`
	Results []result `json:"results"`
}

// decode reads JSON the way chaosbus reads YAML arguments: whole numbers become int
// (encoding/json alone would make every number a float64), others float64.
func decode(raw json.RawMessage) (interface{}, error) {
	if len(raw) == 0 {
		return map[string]interface{}{}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v interface{}
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return numbers(v), nil
}

func numbers(v interface{}) interface{} {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil && !strings.ContainsAny(string(x), ".eE") {
			return int(i)
		}
		f, _ := x.Float64()
		return f
	case []interface{}:
		for i := range x {
			x[i] = numbers(x[i])
		}
	case map[string]interface{}:
		for k := range x {
			x[k] = numbers(x[k])
		}
	}
	return v
}

// empty is sprig's notion of an empty value, as its documentation for default states:
// nil, false, zero numbers, and empty strings, lists and maps.
func empty(v interface{}) bool {
	if v == nil {
		return true
	}
	r := reflect.ValueOf(v)
	switch r.Kind() {
	case reflect.String, reflect.Slice, reflect.Array, reflect.Map:
		return r.Len() == 0
	case reflect.Bool:
		return !r.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return r.Int() == 0
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return r.Uint() == 0
	case reflect.Float32, reflect.Float64:
		return r.Float() == 0
	case reflect.Ptr, reflect.Interface:
		return r.IsNil()
	}
	return false
}

var funcs = template.FuncMap{
	// sprig's default: the first argument when the second is missing or empty.
	"default": func(fallback interface{}, given ...interface{}) interface{} {
		if len(given) == 0 || empty(given[0]) {
			return fallback
		}
		return given[0]
	},
	// sprig's quote: every argument that is not nil, printed with %v and then quoted
	// with %q, separated by spaces.
	"quote": func(args ...interface{}) string {
		quoted := []string{}
		for _, a := range args {
			if a != nil {
				quoted = append(quoted, fmt.Sprintf("%q", fmt.Sprint(a)))
			}
		}
		return strings.Join(quoted, " ")
	},
}

func run(c testCase) result {
	res := result{Name: c.Name}
	data, err := decode(c.Data)
	if err != nil {
		res.Error = &failure{Phase: "data", Message: err.Error()}
		return res
	}
	tmpl, err := template.New(c.Name).Option("missingkey=error").Funcs(funcs).Parse(c.Template)
	if err != nil {
		res.Error = &failure{Phase: "parse", Message: err.Error()}
		return res
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, data); err != nil {
		res.Error = &failure{Phase: "exec", Message: err.Error()}
		return res
	}
	text := out.String()
	res.Output = &text
	return res
}

func main() {
	var cases []testCase
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		fmt.Fprintln(os.Stderr, "gotemplate-oracle: reading cases:", err)
		os.Exit(2)
	}
	rep := report{Go: runtime.Version()}
	for _, c := range cases {
		rep.Results = append(rep.Results, run(c))
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		fmt.Fprintln(os.Stderr, "gotemplate-oracle: writing results:", err)
		os.Exit(1)
	}
}
