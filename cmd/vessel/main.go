// Command vessel builds, stores, verifies, distributes and runs products made
// of verified OCI images. The CLI is thin: each command parses its flags,
// calls one library function from internal/ and prints the result through
// the output module in ui.go, which states the output rules. A dependency
// test (depcheck_test.go) keeps it off the packages it must not use.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/initrd"
)

// commands holds the constructors of the top-level commands; each command
// group registers itself from its own file with addCommand.
var commands []func(*globals) *cobra.Command

func addCommand(f func(*globals) *cobra.Command) { commands = append(commands, f) }

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "vessel",
		Short: "Build, verify, ship and run products made of verified OCI images",
		Long: `vessel manages products made entirely of OCI images whose layers are
read-only filesystem images (squashfs or erofs) protected by dm-verity.

Every image lives in a local store, a standard OCI image layout at
<root>/oci that skopeo and umoci can read. The store is /var/lib/vessel
when run as root, $XDG_DATA_HOME/vessel otherwise; --root or VESSEL_ROOT
select another.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       readBuildInfo().String(),
	}
	root.SetVersionTemplate("vessel {{.Version}}\n")
	root.PersistentFlags().StringVar(&g.root, "root", "", "store directory (default $VESSEL_ROOT, /var/lib/vessel as root, $XDG_DATA_HOME/vessel otherwise)")
	root.PersistentFlags().BoolVar(&g.json, "json", false, "print machine-readable JSON")
	for _, f := range commands {
		root.AddCommand(f(g))
	}
	finishTree(root, g)
	return root
}

// run executes the CLI and returns the process exit code.
func run(args []string) int {
	// SIGINT and SIGTERM cancel the command's context; a command that
	// ends because of that exits 128+N (130 for Ctrl-C), as shells expect.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got atomic.Int32
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigc)
	go func() {
		select {
		case s := <-sigc:
			got.Store(int32(s.(syscall.Signal)))
			cancel()
		case <-ctx.Done():
		}
	}()
	root := newRoot()
	root.SetArgs(args)
	c, err := root.ExecuteContextC(ctx)
	err = oneLineSuggestion(err)
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) && ee.err == nil {
		return ee.code // a container's exit code: nothing to report
	}
	if sig := got.Load(); sig != 0 && errors.Is(err, context.Canceled) {
		return 128 + int(sig) // interrupted: the user knows why
	}
	printError(os.Stderr, err)
	if errors.As(err, &ee) {
		return ee.code
	}
	if isUsageError(err) {
		if c != nil && !strings.Contains(err.Error(), "--help") {
			fmt.Fprintf(os.Stderr, "vessel: hint: see `%s --help`\n", c.CommandPath())
		}
		return 2
	}
	return 1
}

func main() {
	if initrd.IsInit() {
		initrd.Main() // PID 1 in the initrd: never returns
	}
	if initrd.IsHostInit() {
		initrd.HostMain() // PID 1 in the verified host root: never returns
	}
	os.Exit(run(os.Args[1:]))
}
