package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/supervise"
	"github.com/vesselos/vessel/internal/userns"
)

func init() { addCommand(usernsCmd) }

// Environment overrides of the subordinate id files (for tests and for
// systems that keep them elsewhere).
const (
	subuidEnv = "VESSEL_SUBUID"
	subgidEnv = "VESSEL_SUBGID"
)

// usernsAllocator is the allocator of the store root's record.
func (g *globals) usernsAllocator() (*userns.Allocator, error) {
	root, err := g.storeRoot()
	if err != nil {
		return nil, err
	}
	return &userns.Allocator{Dir: root, SubUIDFile: os.Getenv(subuidEnv), SubGIDFile: os.Getenv(subgidEnv)}, nil
}

func usernsCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "userns",
		Short: "Show the user namespace id ranges of services (system.yaml userns: auto | group:NAME)",
		Long: `A service with "userns: auto" in system.yaml runs in a user namespace of its
own: root inside is an unprivileged host id. Its range of 65536 host uids
and gids comes from the ranges /etc/subuid and /etc/subgid delegate to
the user "` + userns.DelegateUser + `" (add e.g. "` + userns.DelegateUser + `:1048576:1048576" to both files;
vessel up says which line when none is there). "userns: group:NAME" gives
every service of the group one shared range.

Ranges are recorded under the store root (` + userns.RecordName + `), kept across restarts
and reboots, and freed only when vessel up runs a manifest of the product
without the service. ` + subuidEnv + ` and ` + subgidEnv + ` name other files than
/etc/subuid and /etc/subgid.`,
		Example: `  vessel userns list
  vessel userns list --json`,
		Args: cobra.NoArgs,
	}
	c.AddCommand(usernsListCmd(g))
	return c
}

func usernsListCmd(g *globals) *cobra.Command {
	var lf listFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "List allocated id ranges: service, host uids and gids, in use",
		Long: `list shows every allocated range: the product, the service or group that
owns it (and the group's services), the host uids and gids it maps to
0..65535 inside, and whether a service of it runs under vessel up now.`,
		Example: `  vessel userns list
  vessel userns list --json
  vessel userns list --format '{{.Owner}} {{.UIDs}}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := g.usernsAllocator()
			if err != nil {
				return err
			}
			rows, err := supervise.UserNSList(g.superviseDir(), a)
			if err != nil {
				return fmt.Errorf("userns list: %w", err)
			}
			ids := make([]string, len(rows))
			for i, r := range rows {
				ids[i] = r.Product + "/" + r.Owner
			}
			return lf.print(cmd.OutOrStdout(), g.json, listTable{rows: rows, ids: ids,
				header: "PRODUCT\tOWNER\tSERVICES\tUIDS\tGIDS\tIN USE",
				line: func(i int) string {
					r := rows[i]
					use := "no"
					if r.InUse {
						use = "yes"
					}
					return strings.Join([]string{r.Product, r.Owner, strings.Join(r.Services, ","), r.UIDs, r.GIDs, use}, "\t")
				}})
		},
	}
	lf.add(c.Flags(), "PRODUCT/OWNER names")
	return c
}
