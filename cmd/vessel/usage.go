package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// createsStore are the commands that may make a new store: the others
// refuse a --root that is not one (a typo must not scatter an empty store
// somewhere, nor read an unrelated directory as an empty store).
var createsStore = map[string]bool{
	"vessel build": true, "vessel copy": true, "vessel pull": true, "vessel install": true,
	"vessel image create": true, "vessel image convert": true,
}

// finishTree applies the CLI-wide usage rules to every command: argument
// and flag errors are usage errors (exit 2), an unknown flag gets the
// nearest known one as a suggestion, and a command group given an unknown
// subcommand fails (exit 2) with suggestions instead of printing its help.
func finishTree(root *cobra.Command, g *globals) {
	root.SetFlagErrorFunc(flagError)
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		g.createsStore = createsStore[cmd.CommandPath()]
		g.rootFlag = cmd.Flags().Changed("root")
		return nil
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasParent() && c.HasSubCommands() && c.Run == nil && c.RunE == nil {
			c.Args = cobra.ArbitraryArgs
			c.RunE = func(cmd *cobra.Command, args []string) error {
				if len(args) == 0 {
					return cmd.Help()
				}
				return unknownCommand(cmd, args[0])
			}
		} else if orig := c.Args; orig != nil {
			c.Args = func(cmd *cobra.Command, args []string) error {
				if err := orig(cmd, args); err != nil {
					var u usageError
					if errors.As(err, &u) {
						return err
					}
					return usageError{err.Error()}
				}
				return nil
			}
		}
		addCompletion(c, g)
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
}

func unknownCommand(cmd *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %q for %q", name, cmd.CommandPath())
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", strings.Join(s, `" or "`))
	}
	return usageError{msg}
}

// flagError makes pflag's errors usage errors and suggests the nearest
// flag for an unknown one.
func flagError(cmd *cobra.Command, err error) error {
	msg := err.Error()
	var name string
	if n, ok := strings.CutPrefix(msg, "unknown flag: --"); ok {
		name = n
	}
	if name != "" {
		best, bestD := "", 3
		cmd.Flags().VisitAll(func(f *pflag.Flag) {
			if f.Hidden {
				return
			}
			d := levenshtein(name, f.Name)
			if strings.HasPrefix(f.Name, name) && len(name) >= 3 {
				d = min(d, 1)
			}
			if d < bestD {
				best, bestD = f.Name, d
			}
		})
		if best != "" {
			msg += fmt.Sprintf(" (did you mean --%s?)", best)
		}
	}
	return usageError{msg}
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// checkStoreRoot refuses a store directory that is not a store: one that
// has files but no OCI layout, always; one that does not exist, when
// --root named it and the command does not create stores.
func (g *globals) checkStoreRoot(root string) error {
	if _, err := os.Stat(filepath.Join(root, "oci", "oci-layout")); err == nil {
		return nil
	}
	ents, err := os.ReadDir(root)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if g.rootFlag && !g.createsStore {
			return usageError{fmt.Sprintf("--root %s: no store there (commands that add images, such as vessel image create, vessel pull and vessel build, create one)", root)}
		}
		return nil
	case err != nil:
		return fmt.Errorf("store %s: %w", root, err)
	}
	for _, e := range ents {
		if e.Name() != "oci" && e.Name() != "tmp" && e.Name() != "lock" {
			return usageError{fmt.Sprintf("%s is not a vessel store: it has files (%s...) but no oci/oci-layout; give a store's directory, or a new or empty one", root, e.Name())}
		}
	}
	return nil
}

// oneLineSuggestion rewrites cobra's multi-line "Did you mean this?" of an
// unknown top-level command into the one-line form the rest of the CLI
// uses.
func oneLineSuggestion(err error) error {
	if err == nil {
		return nil
	}
	msg, sugg, ok := strings.Cut(err.Error(), "\n\nDid you mean this?\n")
	if !ok || !strings.HasPrefix(msg, "unknown command") {
		return err
	}
	var names []string
	for _, f := range strings.Fields(sugg) {
		names = append(names, f)
	}
	return usageError{fmt.Sprintf("%s (did you mean %q?)", msg, strings.Join(names, `" or "`))}
}
