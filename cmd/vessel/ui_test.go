package main

import (
	"bytes"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vesselos/vessel/internal/build"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/supervise"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
	"github.com/vesselos/vessel/internal/userns"
)

// The CLI adds its hint to a library error that carries a known sentinel,
// however deeply wrapped, and nothing to others.
func TestPrintErrorAddsTheCLIHint(t *testing.T) {
	var b bytes.Buffer
	printError(&b, fmt.Errorf("up: %w", fmt.Errorf("verify: %w", trust.ErrNoCA)))
	if got := b.String(); got != "vessel: up: verify: no CA certificate given\nvessel: hint: give the manifest-signing CA certificate with --ca\n" {
		t.Errorf("got %q", got)
	}
	b.Reset()
	printError(&b, errors.New("plain"))
	if got := b.String(); got != "vessel: plain\n" {
		t.Errorf("got %q", got)
	}
}

// flagRE matches a command-line flag in an error message.
var flagRE = regexp.MustCompile(`(^|[\s('"])--[a-z][a-z-]+`)

// Library errors do not name CLI flags: the CLI adds hints (ui.go).
func TestLibraryErrorsNameNoFlags(t *testing.T) {
	fset := token.NewFileSet()
	checked := 0
	err := filepath.WalkDir("../../internal", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		checked++
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			pkg, ok := sel.X.(*ast.Ident)
			if !ok || !(pkg.Name == "fmt" && sel.Sel.Name == "Errorf" || pkg.Name == "errors" && sel.Sel.Name == "New") {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, _ := strconv.Unquote(lit.Value)
			if flagRE.MatchString(s) {
				t.Errorf("%s: error names a flag: %q", fset.Position(lit.Pos()), s)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("only %d files checked", checked)
	}
}

// On a terminal, a build's layer step draws a live line (bytes written,
// then hashed) that the next step's line ends; piped, only the step
// lines are printed.
func TestBuildLayerProgressLine(t *testing.T) {
	for _, live := range []bool{true, false} {
		var b bytes.Buffer
		lp := &layerProgress{w: &b, live: live, start: time.Now()}
		printBuildEvent(lp, build.Event{Image: "app", Step: 1, Steps: 1, Status: build.StatusLayer})
		lp.draw("app", 3<<20, 0, "written")
		lp.hashed("app", 2<<20, 8<<20)
		printBuildEvent(lp, build.Event{Image: "app", Step: 1, Steps: 1, Status: build.StatusBuilt, Digest: "sha256:0123456789abcdef"})
		got := regexp.MustCompile(`\[ *[0-9.]+s\]`).ReplaceAllString(b.String(), "[T]")
		got = regexp.MustCompile(`, [0-9.]+ [KMGT]?i?B/s`).ReplaceAllString(got, ", R/s")
		want := "[T] [1/1] app: making the layer\n[T] [1/1] app: built sha256:0123456789ab\n"
		if live {
			want = "[T] [1/1] app: making the layer\n" +
				"\r\x1b[2K[T]   app: 3.0 MiB written, R/s" +
				"\r\x1b[2K[T]   app: 2.0 MiB of 8.0 MiB hashed (digest, verity), R/s\n" +
				"[T] [1/1] app: built sha256:0123456789ab\n"
		}
		if got != want {
			t.Errorf("live %v:\n%q\nwant\n%q", live, got, want)
		}
	}
}

// Library errors that once named flags or commands themselves now carry a
// sentinel or typed error; the CLI adds the hint.
func TestPrintErrorHintsForLibraryErrors(t *testing.T) {
	_, noSubIDs := userns.NewPlan(userns.User{Name: "alice", UID: 1000, GID: 1000}, nil, nil)
	for _, c := range []struct {
		err  error
		hint string
	}{
		{fmt.Errorf("pull x: descriptor size 9 bytes is larger than the limit of 1 bytes: %w", registry.ErrTooLarge), "raise the limit with --max-blob-size"},
		{fmt.Errorf("push signed manifest: image a (sha256:1) is %w: pull or build it first", registry.ErrImageNotLocal), "with --no-images"},
		{fmt.Errorf("install x: image web: %w", registry.ErrOtherArch), "vessel manifest build --arch"},
		{fmt.Errorf("rootless: %w", noSubIDs), "usermod --add-subuids 100000-165535 --add-subgids 100000-165535 alice"},
		{fmt.Errorf("%w for service %q", supervise.ErrNoLog, "web"), "vessel ps lists the services"},
		{fmt.Errorf("seal x: /s/x %w", tpm.ErrExists), "add --force to replace it"},
		{fmt.Errorf("parse TPM key file: PEM block %q is %w", "PRIVATE KEY", tpm.ErrNotTPMKey), "given as --key FILE, without tpm:"},
	} {
		var b bytes.Buffer
		printError(&b, c.err)
		lines := strings.Split(strings.TrimSpace(b.String()), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[1], "vessel: hint: ") || !strings.Contains(lines[1], c.hint) {
			t.Errorf("%v: printed %q, want a hint with %q", c.err, b.String(), c.hint)
		}
	}
}
