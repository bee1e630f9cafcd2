package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestEveryLeafHasExample walks the command tree: every command a user
// runs (a leaf) has --help examples, one of which runs it, so that a new
// command cannot ship without.
func TestEveryLeafHasExample(t *testing.T) {
	var leaves int
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Name() == "help" || c.Name() == "completion" {
			return // cobra's own
		}
		if !c.HasSubCommands() {
			leaves++
			if strings.TrimSpace(c.Example) == "" {
				t.Errorf("%s has no Example: add one or two lines a user would type", c.CommandPath())
			}
			if !c.Hidden && !strings.Contains(c.Example, c.CommandPath()) {
				t.Errorf("%s: no example runs it (Example: %q)", c.CommandPath(), c.Example)
			}
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRoot())
	if leaves < 40 {
		t.Fatalf("walked %d leaf commands: the tree walk is broken", leaves)
	}
}

// TestManPages generates the man pages (make man) and checks that every
// visible command has one and, with groff installed, that each formats
// without a warning.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	root := newRoot()
	root.SetArgs([]string{"man", dir})
	root.SetOut(io.Discard)
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			return
		}
		page := filepath.Join(dir, strings.ReplaceAll(c.CommandPath(), " ", "-")+".1")
		b, err := os.ReadFile(page)
		if err != nil {
			t.Errorf("%s: no man page: %v", c.CommandPath(), err)
		} else if !strings.HasPrefix(string(b), ".TH ") || !strings.Contains(string(b), ".SH SYNOPSIS") {
			t.Errorf("%s: not a man page", page)
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	if _, err := exec.LookPath("groff"); err != nil {
		t.Log("groff is not installed: pages not formatted")
		return
	}
	pages, _ := filepath.Glob(filepath.Join(dir, "*.1"))
	for _, p := range pages {
		out, err := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", p).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("groff %s: %v: %s", filepath.Base(p), err, out)
		}
	}
}
