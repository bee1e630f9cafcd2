package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

func init() { addCommand(versionCmd) }

// commit is set by make build (-ldflags -X main.commit=...) for builds
// without VCS stamping (-buildvcs=false, or a tree the go command cannot
// read); the toolchain's vcs.revision wins when present.
var commit string

// buildInfo is what vessel version and vessel --version print: the module
// version and the VCS commit (with "-dirty" for a modified tree) that the
// Go toolchain recorded in the binary.
type buildInfo struct {
	Version  string `json:"version"`
	Commit   string `json:"commit,omitempty"`
	Time     string `json:"commitTime,omitempty"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

func readBuildInfo() buildInfo {
	v := buildInfo{Version: "devel", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		v.Commit = commit
		return v
	}
	if bi.Main.Version != "" {
		v.Version = bi.Main.Version
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if v.Commit != "" && dirty {
		v.Commit += "-dirty"
	}
	if v.Commit == "" {
		v.Commit = commit
	}
	return v
}

func (v buildInfo) String() string {
	s := v.Version
	if v.Commit != "" {
		c, dirty := strings.CutSuffix(v.Commit, "-dirty")
		if len(c) > 12 {
			c = c[:12]
		}
		if dirty {
			c += "-dirty"
		}
		s += ", commit " + c
	}
	return fmt.Sprintf("%s (%s, %s)", s, v.Go, v.Platform)
}

func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print vessel's version and build information",
		Example: `  vessel version
  vessel --version
  vessel version --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := readBuildInfo()
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "vessel %s\n", v)
			return err
		},
	}
}
