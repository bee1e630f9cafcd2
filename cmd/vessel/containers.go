package main

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/container"
)

func init() {
	addCommand(stopCmd)
	addCommand(killCmd)
}

// containerTable is the table of vessel ps --all.
func containerTable(cs []container.Info) listTable {
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	return listTable{rows: cs, ids: ids, header: "CONTAINER\tSTATE\tCREATED\tIMAGE\tCOMMAND",
		line: func(i int) string {
			c := cs[i]
			created := "-"
			if !c.Created.IsZero() {
				created = time.Since(c.Created).Round(time.Second).String() + " ago"
			}
			img := c.Image
			if img == "" {
				img = "-"
			}
			return fmt.Sprintf("%s\t%s\t%s\t%s\t%s", c.ID, c.State, created, img, strings.Join(c.Command, " "))
		}}
}

func noContainerHint(err error) error {
	if errors.Is(err, container.ErrNoContainer) {
		return fmt.Errorf("%w (vessel ps --all lists the running containers)", err)
	}
	return err
}

func stopCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "stop NAME...",
		Short: "Stop running containers: SIGTERM, then SIGKILL after --time",
		Long: `Stop containers that vessel run (or vessel up, or a build) runs: send
SIGTERM, wait --time for the container to exit, then send SIGKILL. The
vessel process that runs the container removes it, as after any exit, and
exits with the container's code. vessel ps --all lists the containers.
To stop a service for good use vessel down; its supervisor restarts a
service container that vessel stop ended, per its restart policy.`,
		Example: `  vessel run --name web app &
  vessel stop web
  vessel stop --time 2s web`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var errs []error
			for _, id := range args {
				killed, err := container.Stop(cmd.Context(), g.runDir(), id, timeout)
				if err != nil {
					errs = append(errs, noContainerHint(err))
					continue
				}
				if killed {
					warnf(cmd.ErrOrStderr(), "note", "container %s did not exit %s after SIGTERM; killed it", id, timeout)
				}
				fmt.Fprintln(cmd.OutOrStdout(), id)
			}
			return errors.Join(errs...)
		},
	}
	c.Flags().DurationVarP(&timeout, "time", "t", 10*time.Second, "how long to wait after SIGTERM before SIGKILL")
	return c
}

func killCmd(g *globals) *cobra.Command {
	var sigName string
	c := &cobra.Command{
		Use:   "kill NAME...",
		Short: "Send a signal (default SIGKILL) to running containers",
		Long: `Send a signal to the process of containers that vessel runs; SIGKILL by
default, as podman kill. The vessel process that runs a container removes
it once it has exited.`,
		Example: `  vessel kill web
  vessel kill --signal HUP web`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sig, err := parseSignal(sigName)
			if err != nil {
				return err
			}
			var errs []error
			for _, id := range args {
				if err := container.Signal(cmd.Context(), g.runDir(), id, sig); err != nil {
					errs = append(errs, noContainerHint(err))
					continue
				}
				fmt.Fprintln(cmd.OutOrStdout(), id)
			}
			return errors.Join(errs...)
		},
	}
	c.Flags().StringVarP(&sigName, "signal", "s", "KILL", "signal name (KILL, TERM, HUP, SIGINT...) or number")
	return c
}

// parseSignal reads --signal (container.ParseSignal) as a usage error.
func parseSignal(s string) (syscall.Signal, error) {
	sig, err := container.ParseSignal(s)
	if err != nil {
		return 0, usageError{"--signal " + err.Error()}
	}
	return sig, nil
}
