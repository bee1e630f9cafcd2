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

	"github.com/vesselos/vessel/internal/trust"
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

// libraryFlagTODO are packages whose errors still name flags (their hints
// are to move into the CLI like the others did).
var libraryFlagTODO = []string{"internal/registry", "internal/tpm", "internal/userns"}

// Library errors do not name CLI flags: the CLI adds hints (ui.go).
func TestLibraryErrorsNameNoFlags(t *testing.T) {
	fset := token.NewFileSet()
	checked := 0
	err := filepath.WalkDir("../../internal", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		for _, todo := range libraryFlagTODO {
			if strings.Contains(filepath.ToSlash(path), todo+"/") {
				return nil
			}
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
