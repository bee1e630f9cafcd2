package main

import (
	"context"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/container"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/supervise"
)

// Shell completion (vessel completion bash|zsh|fish) of the names
// commands take: images in the store, services of the running vessel up,
// running containers. Which argument of which command gets which list is
// set here, by command path, so command files stay as they are.
var completes = map[string]func(g *globals) []string{
	"vessel run": imageNames, "vessel inspect": imageNames, "vessel rm": imageNames,
	"vessel tag": imageNames, "vessel push": imageNames, "vessel image verify": imageNames,
	"vessel mount": imageNames, "vessel chroot": imageNames, "vessel logs": serviceNames, "vessel restart": serviceNames,
	"vessel stop": containerNames, "vessel kill": containerNames,
}

// many are the commands whose every argument is a name of the list; the
// others complete only their first.
var many = map[string]bool{"vessel rm": true, "vessel stop": true, "vessel kill": true}

func addCompletion(c *cobra.Command, g *globals) {
	list, ok := completes[c.CommandPath()]
	if !ok || c.ValidArgsFunction != nil {
		return
	}
	path := c.CommandPath()
	c.ValidArgsFunction = func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 && !many[path] {
			return nil, cobra.ShellCompDirectiveDefault
		}
		return list(g), cobra.ShellCompDirectiveNoFileComp
	}
}

// imageNames lists NAME:TAG of the store, if there is one (completion
// never creates a store).
func imageNames(g *globals) []string {
	root, err := g.storeRoot()
	if err != nil {
		return nil
	}
	if _, err := os.Stat(filepath.Join(root, "oci", "oci-layout")); err != nil {
		return nil
	}
	s, err := store.Open(root)
	if err != nil {
		return nil
	}
	tags, err := s.List()
	if err != nil {
		return nil
	}
	var out []string
	for _, t := range tags {
		out = append(out, t.Name+":"+t.Tag)
	}
	return out
}

func serviceNames(g *globals) []string {
	sts, err := supervise.Services(g.superviseDir())
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range sts {
		out = append(out, s.Name)
	}
	return out
}

func containerNames(g *globals) []string {
	cs, err := container.List(context.Background(), g.runDir())
	if err != nil {
		return nil
	}
	var out []string
	for _, c := range cs {
		out = append(out, c.ID)
	}
	return out
}
