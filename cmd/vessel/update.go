package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/bounded"
	"github.com/vesselos/vessel/internal/initrd"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
	"github.com/vesselos/vessel/internal/update"
)

func init() { addCommand(updateCmd) }

// machineTrust fills in the CA and product ID the initrd handed to the
// host (/run/vessel) when the flags do not name them.
func (t *trustFlags) machineTrust() {
	if t.ca == "" {
		if _, err := os.Stat(initrd.HostCAFile); err == nil {
			t.ca = initrd.HostCAFile
		}
	}
	if t.productID == "" {
		if b, err := os.ReadFile(initrd.HostProductIDFile); err == nil {
			t.productID = strings.TrimSpace(string(b))
		}
	}
}

// bootedSlot is the slot this boot runs, from the initrd's boot record
// ("" when vessel's initrd did not boot this machine).
func bootedSlot() string {
	r, err := initrd.ReadBootRecord(initrd.BootRecordFile)
	if err != nil {
		return ""
	}
	return r.Slot
}

func updateCmd(g *globals) *cobra.Command {
	var (
		rf      registryFlags
		tf      trustFlags
		from    string
		ukiFile string
		esp     string
	)
	c := &cobra.Command{
		Use:   "update SIGNED|docker://HOST/REPO[:TAG] [--from SOURCE] [--uki kernel.efi]",
		Short: "Stage a new signed system manifest in the other slot and arm a one-shot trial boot",
		Long: `update moves a machine to a new signed system manifest atomically, with an
automatic way back. It verifies the manifest as the initrd will at the next
boot (chain to the CA, product, version not below the accepted one, every
image in the store down to every verity block), fetches only the images the
store lacks, writes it into the inactive slot and arms a one-shot trial:
the next boot runs it once. The new system becomes the default only after
its health check passes (every service up, and each service's health
command passing, for the manifest's healthSeconds); a failed check, a crash,
a hang or a power cut during the trial boot brings the machine back to the
default slot by itself. Then the anti-rollback version advances.

A manifest of another product, a version not above the running one or
below the accepted one, or an image that fails verification is refused, and
the slots stay as they were. Images no slot references any more are
garbage-collected.

SIGNED is a signed manifest file; its images come from the store, or from
--from (docker://HOST/REPO, by digest, or another store's root directory).
docker://HOST/REPO[:TAG] fetches the manifest and its signature from a
registry (as vessel install) and the images from the same repository.

When the kernel, initrd or command line changes, --uki brings the new
signed UKI: it must be signed by a certificate in the firmware's db and
boot this product. It is written to the ESP (EFI/vessel/<hash>.efi, found by
its partition name and mounted for the update, or --esp DIR), gets its own
UEFI boot entry, and the trial boots it once through BootNext: a kernel
that panics, an initrd that hangs (reset by the hardware watchdog when the
UKI's command line has vessel.watchdog=SECONDS), or a power cut falls back
to the default slot's UKI at the next boot. A confirmed trial's UKI becomes
the first boot entry.

On a machine booted by vessel's initrd, --ca and --product-id default to the
ones in the initrd (handed over in /run/vessel). The slot record is
<root>/system/slots.json; see docs/update.md.` + registryHelp,
		Example: `  vessel update docker://registry.example.com/acme/product:4
  vessel update product-4.signed --from docker://registry.example.com/acme/product
  vessel update product-4.signed --from /mnt/usb/vessel --ca manifest-ca.pem --product-id 0f8fad5b-d9cb-469f-a165-70867728950e
  vessel update product-5.signed --from /mnt/usb/vessel --uki /mnt/usb/kernel-5.efi
  vessel update status
  vessel update rollback`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tf.machineTrust()
			topts, err := tf.options("update")
			if err != nil {
				return err
			}
			st, err := g.openStore()
			if err != nil {
				return err
			}
			client, finish, err := rf.client(cmd, g)
			if err != nil {
				return err
			}
			defer finish()
			opts := update.StageOptions{Trust: topts}
			if ukiFile != "" {
				if opts.UKI, err = os.ReadFile(ukiFile); err != nil {
					return fmt.Errorf("update: %w", err)
				}
			}
			fw, closeFw, err := machineFirmware(st.Root(), ukiFile != "", esp)
			if err != nil {
				return fmt.Errorf("update: %w", err)
			}
			defer closeFw()
			opts.Firmware = fw
			var res *update.Staged
			if strings.HasPrefix(args[0], "docker://") {
				if from != "" {
					return usageError{"update: --from is for a manifest file; a registry manifest's images come from its repository"}
				}
				ref, err := registryRef("update", args[0])
				if err != nil {
					return err
				}
				res, err = update.StageFromRegistry(cmd.Context(), st, client, ref, opts)
				if err != nil {
					return fmt.Errorf("update: %w", err)
				}
			} else {
				signed, err := bounded.ReadFile(args[0], trust.MaxSignedSize)
				if err != nil {
					return fmt.Errorf("update: %w", err)
				}
				opts.Source = args[0]
				if from != "" {
					src, err := updateSource(from)
					if err != nil {
						return err
					}
					opts.Client, opts.From = client, src
				}
				if res, err = update.Stage(cmd.Context(), st, signed, opts); err != nil {
					return fmt.Errorf("update: %w", err)
				}
			}
			finish()
			if g.json {
				return printResultEvent(cmd.OutOrStdout(), res)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "staged version %d (%s) in slot %s: trial armed for the next boot (%d try)\n", res.Version, res.Digest, res.Slot, res.TriesLeft)
			for _, im := range res.Images {
				how := "already in the store"
				if im.Pulled {
					how = fmt.Sprintf("fetched %d bytes", im.Fetched)
				}
				fmt.Fprintf(w, "  %s: %s verified (%s), tagged %s\n", im.Name, im.Digest, how, im.Tag)
			}
			fmt.Fprintf(w, "  fetched %d of %d bytes\n", res.Fetched, res.Total)
			if res.BootNext != "" {
				fmt.Fprintf(w, "  UKI %s (boot entry %s) armed as the firmware's one-shot BootNext\n", res.UKI.File, res.BootNext)
			}
			if len(res.RemovedUKIs) > 0 {
				fmt.Fprintf(w, "  no slot references %s any more: removed from the ESP\n", strings.Join(res.RemovedUKIs, ", "))
			}
			if len(res.Untagged) > 0 {
				freed := int64(0)
				if res.GC != nil {
					freed = res.GC.Bytes
				}
				fmt.Fprintf(w, "  no slot references %s any more: %d bytes freed\n", strings.Join(res.Untagged, ", "), freed)
			}
			fmt.Fprintln(w, "reboot to try it; it becomes the default once its health check passes")
			return nil
		},
	}
	rf.add(c)
	tf.add(c.Flags())
	c.Flags().StringVar(&from, "from", "", "where missing images come from: docker://HOST/REPO (by digest) or another store's root directory")
	c.Flags().StringVar(&ukiFile, "uki", "", "a new signed UKI for the slot (kernel, initrd or command line changed)")
	c.Flags().StringVar(&esp, "esp", "", "the ESP, mounted here (default: find it by its partition name and mount it for the update)")
	c.AddCommand(updateStatusCmd(g), updateRollbackCmd(g), updateCheckCmd(g))
	return c
}

// machineFirmware opens the ESP and the UEFI variables when a UKI is
// staged (need) or the slot record uses UKIs; else nil.
func machineFirmware(root string, need bool, esp string) (*update.Firmware, func() error, error) {
	if !need && !update.UsesUKIs(root) {
		return nil, func() error { return nil }, nil
	}
	fw, closeFn, err := update.OpenFirmware(esp)
	if err != nil {
		return nil, func() error { return nil }, err
	}
	return fw, closeFn, nil
}

// updateSource parses --from.
func updateSource(from string) (func(digest.Digest) registry.Endpoint, error) {
	if strings.HasPrefix(from, "docker://") {
		ref, err := registryRef("update: --from", from)
		if err != nil {
			return nil, err
		}
		return func(d digest.Digest) registry.Endpoint { return registry.Registry(ref.WithDigest(d)) }, nil
	}
	src, err := store.Open(from)
	if err != nil {
		return nil, fmt.Errorf("update: --from %s: %w", from, err)
	}
	return func(d digest.Digest) registry.Endpoint { return registry.Store(src, d.String()) }, nil
}

func updateStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the slots: booted, default, staged trial, tries left, versions, last result",
		Example: `  vessel update status
  vessel update status --json
  vessel --root /mnt/data update status`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			root, err := g.storeRoot()
			if err != nil {
				return err
			}
			s, err := update.GetStatus(root, bootedSlot())
			if err != nil {
				return fmt.Errorf("update status: %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), s)
			}
			printStatus(cmd.OutOrStdout(), s)
			return nil
		},
	}
}

func printStatus(w io.Writer, s *update.Status) {
	booted := s.Booted
	if booted == "" {
		booted = "unknown (not booted by vessel's initrd)"
	}
	fmt.Fprintf(w, "product %s, booted slot %s, default slot %s, accepted version %d\n", s.Product, booted, s.Default, s.Accepted)
	for _, sl := range s.Slots {
		var tags []string
		for _, t := range []struct {
			on   bool
			name string
		}{{sl.Default, "default"}, {sl.Booted, "booted"}, {sl.Trial, "trial"}} {
			if t.on {
				tags = append(tags, t.name)
			}
		}
		fmt.Fprintf(w, "  slot %s: version %d %s [%s]\n", sl.Name, sl.Version, sl.Digest, strings.Join(tags, ","))
		if sl.UKI != nil {
			fmt.Fprintf(w, "    UKI %s (boot entry %s)\n", sl.UKI.File, sl.UKI.Entry)
		}
	}
	if t := s.Trial; t != nil {
		state := "armed"
		if t.Booting {
			state = "booted, waiting for its health check"
		}
		fmt.Fprintf(w, "trial: slot %s %s, %d tries left\n", t.Slot, state, t.TriesLeft)
	} else {
		fmt.Fprintln(w, "trial: none")
	}
	if l := s.Last; l != nil {
		fmt.Fprintf(w, "last: slot %s version %d %s at %s: %s\n", l.Slot, l.Version, l.Outcome, l.At.Format(time.RFC3339), l.Why)
	}
	next := "the default"
	if s.NextTrial {
		next = "a trial"
	}
	fmt.Fprintf(w, "next boot: slot %s (%s)\n", s.NextBoot, next)
}

func updateRollbackCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rollback",
		Short: "Go back to the other slot: disarm a staged trial, end a running one, or make the other slot the default",
		Long: `rollback disarms a trial that has not booted yet, or ends a trial boot that
is running (recorded as failed: the next boot runs the default). Without a
trial it makes the other slot the default, but only if its version is not
below the accepted one: an older system is refused by the anti-rollback
record, and rollback says so instead of leaving a machine that will not boot.`,
		Example: `  vessel update rollback
  vessel update rollback --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			root, err := g.storeRoot()
			if err != nil {
				return err
			}
			fw, closeFw, err := machineFirmware(root, false, "")
			if err != nil {
				return fmt.Errorf("update rollback: %w", err)
			}
			defer closeFw()
			r, err := update.Rollback(root, bootedSlot(), fw)
			if err != nil {
				return fmt.Errorf("update %w", err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "next boot: slot %s (version %d)\n", r.NextBoot, r.Version)
			if r.Reboot {
				fmt.Fprintln(cmd.OutOrStdout(), "this boot runs the other slot: reboot to go back")
			}
			return nil
		},
	}
}

func updateCheckCmd(g *globals) *cobra.Command {
	var (
		tf     trustFlags
		window time.Duration
		slot   string
		tpmDev string
	)
	c := &cobra.Command{
		Use:   "check",
		Short: "The health check of a trial boot: confirm the new slot, or record why not",
		Long: `check is what the host's init runs after the services of a trial boot were
started: every service of the manifest must stay running, without a
restart, and each service's health command must exit 0, for the health
window (the manifest's healthSeconds, default 30s, or --window). Then the
trial slot becomes the default and the accepted version advances: in
trust/versions.json, then in the TPM's NV counter when the machine has one
(provisioned by vessel's initrd; --tpm). Otherwise
the trial is recorded as failed with the reason and check exits 1: the
host's init reboots and the initrd boots the default slot. On a boot that
is not a trial it does nothing.`,
		Example: `  vessel update check
  vessel update check --window 10s --json
  vessel update check --tpm none          # leave the TPM counter to the next boot's initrd`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			tf.machineTrust()
			topts, err := tf.options("update check")
			if err != nil {
				return err
			}
			st, err := g.openStore()
			if err != nil {
				return err
			}
			if slot == "" {
				slot = bootedSlot()
			}
			if slot == "" {
				return usageError{"update check: this machine was not booted by vessel's initrd; name the booted slot with --slot"}
			}
			copts := update.CheckOptions{Trust: topts, SuperviseDir: g.superviseDir(), Booted: slot, Window: window,
				Log: func(f string, a ...any) { fmt.Fprintf(cmd.ErrOrStderr(), "update check: "+f+"\n", a...) }}
			if tpmDev != "none" {
				t, err := tpm.OpenCounter(tpmDev)
				if err != nil {
					return fmt.Errorf("update check: the TPM's version counter: %w", err)
				}
				if t != nil {
					defer t.Close()
					copts.Counter = t
				}
			}
			fw, closeFw, ferr := machineFirmware(st.Root(), false, "")
			if ferr != nil {
				// the initrd repairs BootOrder at the next boot
				fmt.Fprintf(cmd.ErrOrStderr(), "update check: %v: a confirmed UKI becomes the first boot entry at the next boot\n", ferr)
			}
			defer closeFw()
			copts.Firmware = fw
			res, err := update.Check(cmd.Context(), st, copts)
			if g.json && res != nil {
				if perr := printJSON(cmd.OutOrStdout(), res); perr != nil {
					return perr
				}
			} else if res != nil {
				switch {
				case !res.Trial:
					fmt.Fprintf(cmd.OutOrStdout(), "slot %s (version %d) is not a trial boot: nothing to check\n", res.Slot, res.Version)
				case res.Outcome == update.OutcomeGood:
					fmt.Fprintf(cmd.OutOrStdout(), "slot %s (version %d) healthy for %s: now the default, version %d accepted\n", res.Slot, res.Version, res.Window, res.Version)
				default:
					fmt.Fprintf(cmd.OutOrStdout(), "slot %s (version %d) failed: %s\n", res.Slot, res.Version, res.Why)
				}
			}
			if errors.Is(err, update.ErrUnhealthy) {
				return exitError{code: 1, err: fmt.Errorf("update check: %w", err)}
			}
			if err != nil {
				return fmt.Errorf("update check: %w", err)
			}
			return nil
		},
	}
	tf.add(c.Flags())
	c.Flags().DurationVar(&window, "window", 0, "how long every service must stay healthy (default: the manifest's healthSeconds, or 30s)")
	c.Flags().StringVar(&tpmDev, "tpm", tpm.DefaultDevice, "the TPM whose version counter a confirmed trial advances (none: the file record only; no TPM or no counter: the same)")
	c.Flags().StringVar(&slot, "slot", "", "the slot this boot runs (default: from the initrd's boot record)")
	return c
}
