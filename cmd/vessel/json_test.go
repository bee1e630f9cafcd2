package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/supervise"
)

// The JSON conventions of every --json output (ui.go): keys camelCase,
// empty lists [] and empty maps {}, never null.
//
// Three checks cover every command:
//   - while the user stories run (TestScript, TestRegistryScript,
//     TestHostileScript), every value a command prints as JSON goes
//     through jsonProblems (checkJSON, set in TestMain), and the test
//     fails on any problem it found;
//   - TestJSONOutputTypes type-checks the CLI and walks the type of every
//     value handed to the output module, so the commands no story runs
//     here (boot, TPM, UEFI) are covered too;
//   - TestJSONTagsCamelCase reads every json tag of the module's own
//     structs.
// Null lists cannot reach the output: jsonValue (TestJSONEmptyNotNull).

var camelCase = regexp.MustCompile(`^[a-z][a-zA-Z0-9]*$`)

// jsonProblems lists the keys of v that are not camelCase: the fields of
// vessel's own types (named types of other modules keep their own,
// standard formats, such as the OCI image config's "Entrypoint") and the
// keys of ad hoc objects (a map[string]any anywhere, or any map printed
// as the whole output: {"csr": ..., "name": ...}). Other maps are data
// (labels, annotations) and keep their keys.
func jsonProblems(v any) []string {
	var out []string
	var walk func(v reflect.Value, where string)
	top := true
	walk = func(v reflect.Value, where string) {
		isTop := top
		top = false
		if !v.IsValid() {
			return
		}
		t := v.Type()
		if marshalsItself(t) {
			return
		}
		switch v.Kind() {
		case reflect.Pointer, reflect.Interface:
			if !v.IsNil() {
				walk(v.Elem(), where)
			}
		case reflect.Slice, reflect.Array:
			for i := range v.Len() {
				walk(v.Index(i), where+"[]")
			}
		case reflect.Map:
			adhoc := t.Key().Kind() == reflect.String && (isTop || t.Elem().Kind() == reflect.Interface || t.Elem() == reflect.TypeFor[json.RawMessage]())
			for it := v.MapRange(); it.Next(); {
				k := fmt.Sprint(it.Key().Interface())
				if adhoc && !camelCase.MatchString(k) {
					out = append(out, fmt.Sprintf("%s: key %q", where, k))
				}
				walk(it.Value(), where+"."+k)
			}
		case reflect.Struct:
			if p := t.PkgPath(); p != "" && p != "main" && !strings.HasPrefix(p, "github.com/vesselos/vessel") {
				return
			}
			for i := range t.NumField() {
				f := t.Field(i)
				name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
				if name == "-" {
					continue
				}
				if f.Anonymous && name == "" { // promoted fields
					walk(v.Field(i), where)
					continue
				}
				if !f.IsExported() {
					continue
				}
				if name == "" {
					name = f.Name
				}
				if !camelCase.MatchString(name) {
					out = append(out, fmt.Sprintf("%s (%s.%s): key %q", where, t, f.Name, name))
				}
				walk(v.Field(i), where+"."+name)
			}
		}
	}
	walk(reflect.ValueOf(v), fmt.Sprintf("%T", v))
	return out
}

// jsonProblemsFile collects what jsonProblems finds while stories run:
// VESSEL_JSON_PROBLEMS names it for the vessel commands the stories run.
const jsonProblemsEnv = "VESSEL_JSON_PROBLEMS"

var jsonProblemsMu sync.Mutex

// recordJSONProblems is TestMain's checkJSON for a vessel command run by
// a story: it appends each problem, with the command line, to the file.
func recordJSONProblems(path string) func(v any) {
	return func(v any) {
		ps := jsonProblems(v)
		if len(ps) == 0 {
			return
		}
		jsonProblemsMu.Lock()
		defer jsonProblemsMu.Unlock()
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return
		}
		defer f.Close()
		for _, p := range ps {
			fmt.Fprintf(f, "vessel %s: %s\n", strings.Join(os.Args[1:], " "), p)
		}
	}
}

// checkStoriesJSON makes the stories of t record JSON problems (in Setup,
// call the returned function) and fails t, once every story has run, if
// there were any.
func checkStoriesJSON(t *testing.T) (setenv func(set func(k, v string))) {
	path := filepath.Join(t.TempDir(), "json-problems")
	t.Cleanup(func() {
		b, err := os.ReadFile(path)
		if err == nil && len(b) > 0 {
			t.Errorf("--json output breaks the conventions (camelCase keys):\n%s", b)
		}
	})
	return func(set func(k, v string)) { set(jsonProblemsEnv, path) }
}

// The checker finds what it is for.
func TestJSONProblems(t *testing.T) {
	type inner struct {
		OK  string `json:"okKey"`
		Bad string `json:"bad_key"`
	}
	type out struct {
		Name    string
		Inner   []inner           `json:"inner"`
		Labels  map[string]string `json:"labels"`
		Created time.Time         `json:"created"`
		Entry   supervise.LogEntry
	}
	v := out{Inner: []inner{{}}, Labels: map[string]string{"org.example.snake_case": "data"}}
	got := strings.Join(jsonProblems(v), "\n")
	for _, want := range []string{`key "Name"`, `key "bad_key"`, `key "Entry"`} {
		if !strings.Contains(got, want) {
			t.Errorf("missed %s:\n%s", want, got)
		}
	}
	if strings.Contains(got, "okKey") || strings.Contains(got, "snake_case") || strings.Contains(got, "time") {
		t.Errorf("flagged a good key or a map's data:\n%s", got)
	}
	if p := jsonProblems(map[string]any{"event": "x", "Bad_Key": 1}); len(p) != 1 || !strings.Contains(p[0], "Bad_Key") {
		t.Errorf("ad hoc object: %v", p)
	}
	if p := jsonProblems(map[string]string{"crl": "x", "machine_id": "y"}); len(p) != 1 || !strings.Contains(p[0], "machine_id") {
		t.Errorf("ad hoc object of strings: %v", p)
	}
}

// jsonValue prints empty lists and maps as [] and {}, not null, but for
// omitempty fields, at any depth and at the top.
func TestJSONEmptyNotNull(t *testing.T) {
	type row struct {
		Tags   []string          `json:"tags"`
		Opt    []string          `json:"opt,omitempty"`
		Labels map[string]string `json:"labels"`
		Ptr    *row              `json:"ptr,omitempty"`
		When   time.Time         `json:"when,omitzero"`
	}
	orig := &row{Ptr: &row{}}
	var b bytes.Buffer
	if err := printJSON(&b, struct {
		Rows  []row `json:"rows"`
		One   *row  `json:"one"`
		Inner any   `json:"inner"`
	}{Rows: []row{{}}, One: orig, Inner: map[string]any{"list": []int(nil)}}); err != nil {
		t.Fatal(err)
	}
	var compact bytes.Buffer
	json.Compact(&compact, b.Bytes())
	want := `{"rows":[{"tags":[],"labels":{}}],"one":{"tags":[],"labels":{},"ptr":{"tags":[],"labels":{}}},"inner":{"list":[]}}`
	if compact.String() != want {
		t.Errorf("got  %s\nwant %s", compact.String(), want)
	}
	if orig.Tags != nil || orig.Ptr.Labels != nil {
		t.Error("jsonValue changed the value it was given")
	}
	b.Reset()
	if err := printJSON(&b, []supervise.Status(nil)); err != nil || b.String() != "[]\n" {
		t.Errorf("an empty list: %q, %v", b.String(), err)
	}
	b.Reset()
	if err := printResultEvent(&b, struct {
		Images []string `json:"images"`
	}{}); err != nil || b.String() != `{"event":"result","images":[]}`+"\n" {
		t.Errorf("result event: %q, %v", b.String(), err)
	}
}

// jsonNotOutput are json tags of formats that are not vessel's --json
// output, fixed by others or kept on disk (renaming them would break what
// is there): file (from the module root) and key.
var jsonNotOutput = map[string]string{
	"internal/registry/auth.go access_token": "the token server's answer (RFC 6749)",
	"internal/recipe/key.go":                 "build cache key material: renaming would miss every cache",
	"internal/build/fetch.go last_modified":  "http import cache record on disk",
	"internal/ociruntime/detect.go mtime_ns": "runtime probe cache on disk",
}

// Every json tag of the module's own structs is camelCase, and a struct
// that tags some fields tags every exported one (an untagged field would
// be a PascalCase key).
func TestJSONTagsCamelCase(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var problems []string
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			st, ok := n.(*ast.StructType)
			if !ok {
				return true
			}
			var tagged bool
			var untagged []*ast.Field
			for _, fl := range st.Fields.List {
				tag := ""
				if fl.Tag != nil {
					tag = reflect.StructTag(strings.Trim(fl.Tag.Value, "`")).Get("json")
				}
				name, _, _ := strings.Cut(tag, ",")
				exported := len(fl.Names) > 0 && fl.Names[0].IsExported()
				switch {
				case tag == "" && exported:
					untagged = append(untagged, fl)
				case tag != "":
					tagged = true
				}
				if name == "" || name == "-" {
					continue
				}
				if _, ok := jsonNotOutput[rel]; ok {
					continue
				}
				if _, ok := jsonNotOutput[rel+" "+name]; ok {
					continue
				}
				if !camelCase.MatchString(name) {
					problems = append(problems, fmt.Sprintf("%s: json key %q", fset.Position(fl.Pos()), name))
				}
			}
			if tagged {
				for _, fl := range untagged {
					problems = append(problems, fmt.Sprintf("%s: %s has no json tag (the key would be %q)", fset.Position(fl.Pos()), fl.Names[0].Name, fl.Names[0].Name))
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Errorf("json keys that are not camelCase:\n%s", strings.Join(problems, "\n"))
	}
}

// TestJSONOutputTypes reads the CLI's source with its types: every value
// handed to the output module (printJSON, printResultEvent, jsonValue, an
// event emitter, a list's rows) has a type whose JSON keys are camelCase,
// down to every field of vessel's own types, including the commands no
// story runs here. An exported field without a json tag would be a
// PascalCase key.
func TestJSONOutputTypes(t *testing.T) {
	if testing.Short() {
		t.Skip("type-checks the CLI")
	}
	out, err := exec.Command("go", "list", "-export", "-deps", "-json=ImportPath,Export", ".").Output()
	if err != nil {
		t.Skipf("go list -export: %v (needs the go tool)", err)
	}
	exports := map[string]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p struct{ ImportPath, Export string }
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		exports[p.ImportPath] = p.Export
	}
	fset := token.NewFileSet()
	files, _ := filepath.Glob("*.go")
	var parsed []*ast.File
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		pf, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, pf)
	}
	conf := types.Config{Importer: importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		if e := exports[path]; e != "" {
			return os.Open(e)
		}
		return nil, fmt.Errorf("no export data for %s", path)
	})}
	info := &types.Info{Types: map[ast.Expr]types.TypeAndValue{}}
	if _, err := conf.Check("main", fset, parsed, info); err != nil {
		t.Fatal(err)
	}

	// The values printed: the argument of each output call.
	var printed []ast.Expr
	for _, f := range parsed {
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				name := ""
				switch fn := n.Fun.(type) {
				case *ast.Ident:
					name = fn.Name
				case *ast.SelectorExpr:
					name = fn.Sel.Name
				}
				switch {
				case (name == "printJSON" || name == "printResultEvent") && len(n.Args) == 2:
					printed = append(printed, n.Args[1])
				case (name == "jsonValue" || name == "emit") && len(n.Args) == 1:
					printed = append(printed, n.Args[0])
				}
			case *ast.KeyValueExpr:
				if k, ok := n.Key.(*ast.Ident); ok && k.Name == "rows" {
					printed = append(printed, n.Value)
				}
			}
			return true
		})
	}
	if len(printed) < 50 {
		t.Fatalf("found %d printed values: the search is broken", len(printed))
	}
	var problems []string
	seen := map[types.Type]bool{}
	var check func(ty types.Type, where string)
	check = func(ty types.Type, where string) {
		if seen[ty] {
			return
		}
		seen[ty] = true
		for _, m := range []string{"MarshalJSON", "MarshalText"} {
			if obj, _, _ := types.LookupFieldOrMethod(types.NewPointer(ty), true, nil, m); obj != nil {
				return
			}
		}
		if n, ok := ty.(*types.Named); ok {
			if p := n.Obj().Pkg(); p != nil && p.Path() != "main" && !strings.HasPrefix(p.Path(), "github.com/vesselos/vessel") {
				return // another module's format
			}
		}
		switch u := ty.Underlying().(type) {
		case *types.Pointer:
			check(u.Elem(), where)
		case *types.Slice:
			check(u.Elem(), where+"[]")
		case *types.Array:
			check(u.Elem(), where+"[]")
		case *types.Map:
			check(u.Elem(), where+"{}")
		case *types.Struct:
			for i := range u.NumFields() {
				f := u.Field(i)
				name, _, _ := strings.Cut(reflect.StructTag(u.Tag(i)).Get("json"), ",")
				if name == "-" {
					continue
				}
				if f.Embedded() && name == "" {
					check(f.Type(), where)
					continue
				}
				if !f.Exported() {
					continue
				}
				if name == "" {
					name = f.Name()
				}
				if !camelCase.MatchString(name) {
					problems = append(problems, fmt.Sprintf("%s: %s.%s: key %q", where, ty, f.Name(), name))
				}
				check(f.Type(), where+"."+name)
			}
		}
	}
	for _, e := range printed {
		// An ad hoc object: map[string]...{"key": ...}.
		if lit, ok := e.(*ast.CompositeLit); ok {
			if _, isMap := info.Types[e].Type.Underlying().(*types.Map); isMap {
				for _, el := range lit.Elts {
					if kv, ok := el.(*ast.KeyValueExpr); ok {
						if k, ok := kv.Key.(*ast.BasicLit); ok && k.Kind == token.STRING {
							if key, _ := strconv.Unquote(k.Value); !camelCase.MatchString(key) {
								problems = append(problems, fmt.Sprintf("%s: key %q", fset.Position(k.Pos()), key))
							}
						}
					}
				}
			}
		}
		tv, ok := info.Types[e]
		if !ok || tv.Type == nil {
			continue
		}
		check(tv.Type, fset.Position(e.Pos()).String())
	}
	if len(problems) > 0 {
		t.Errorf("JSON output types with keys that are not camelCase:\n%s", strings.Join(problems, "\n"))
	}
}
