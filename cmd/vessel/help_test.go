package main

import (
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
