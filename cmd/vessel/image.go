package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/archive"
	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/platform"
	"github.com/vesselos/vessel/internal/reference"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/store"
)

func init() {
	addCommand(imageCmd)
	addCommand(imagesCmd)
	addCommand(inspectCmd)
	addCommand(rmCmd)
	addCommand(gcCmd)
}

func (g *globals) openStore() (*store.Store, error) {
	root, err := g.storeRoot()
	if err != nil {
		return nil, err
	}
	if err := g.checkStoreRoot(root); err != nil {
		return nil, err
	}
	return store.Open(root)
}

// sourceDateEpoch reads SOURCE_DATE_EPOCH (reproducible builds).
func sourceDateEpoch() (*int64, error) {
	v, ok := os.LookupEnv("SOURCE_DATE_EPOCH")
	if !ok || v == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("SOURCE_DATE_EPOCH=%q: must be a non-negative number of seconds", v)
	}
	return &n, nil
}

func layerFormat(typ, comp string, compSet bool) (layer.Format, error) {
	t, err := layer.ParseType(typ)
	if err != nil {
		return layer.Format{}, usageError{err.Error()}
	}
	f := layer.DefaultFormat(t)
	if compSet {
		f.Compression = comp
		if comp == "none" {
			f.Compression = ""
		}
	}
	return f, nil
}

// layerWork gathers what every layer-making command needs: the format from
// --type/--compression, SOURCE_DATE_EPOCH, and the open store.
func (g *globals) layerWork(cmd *cobra.Command, typ, comp string) (layer.Format, *int64, *store.Store, error) {
	f, err := layerFormat(typ, comp, cmd.Flags().Changed("compression"))
	if err != nil {
		return f, nil, nil, err
	}
	epoch, err := sourceDateEpoch()
	if err != nil {
		return f, nil, nil, err
	}
	s, err := g.openStore()
	return f, epoch, s, err
}

func imageCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "image",
		Short: "Create, convert and verify images in the store",
	}
	c.AddCommand(imageCreateCmd(g), imageVerifyCmd(g), imageConvertCmd(g), imageIndexCmd(g))
	return c
}

func imageCreateCmd(g *globals) *cobra.Command {
	var dirs []string
	var typ, comp, arch string
	c := &cobra.Command{
		Use:   "create NAME[:TAG] --layer DIR [--layer DIR]... [--arch ARCH]",
		Short: "Create an image from directories, one verified layer each",
		Long: `Create an image whose layers are the given directories, lowest first.
Each directory becomes a filesystem image (squashfs by default) followed by its
dm-verity hash tree; the tree's root hash is recorded in the image manifest.

Owners, modes, xattrs, devices and overlay whiteouts are kept as they are, so
run as root to build layers with files that root owns. With SOURCE_DATE_EPOCH
set, the same directories always give the same digests.

NAME follows the distribution spec: lower-case letters and digits separated by
".", "_", "__" or "-", components joined by "/" (no upper case, no "..", no
leading "/"). TAG is letters, digits, "_", "." and "-" (latest if none). See
docs/image.md#references.`,
		Example: `  vessel image create demo:1 --layer ./rootfs-base --layer ./rootfs-app
  SOURCE_DATE_EPOCH=1700000000 vessel image create demo:1 --layer ./rootfs --type erofs
  vessel image create tiny:arm64 --layer ./rootfs-arm64 --arch arm64`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, epoch, s, err := g.layerWork(cmd, typ, comp)
			if err != nil {
				return err
			}
			var p ocispec.Platform
			if arch != "" {
				if p, err = platform.Parse(arch); err != nil {
					return usageError{fmt.Sprintf("--arch: %v", err)}
				}
			}
			lp := newLayerProgress(cmd, g)
			res, err := image.Create(cmd.Context(), s, args[0], dirs, image.CreateOptions{
				Format: f, SourceDateEpoch: epoch, Progress: lp.step, Written: lp.written, Platform: p,
				Hashed: func(layer int, done, total int64) { lp.hashed(fmt.Sprintf("layer %d", layer), done, total) },
			})
			lp.done()
			if err != nil {
				return err
			}
			return printCreated(cmd, g, res)
		},
	}
	c.Flags().StringArrayVarP(&dirs, "layer", "l", nil, "directory to make into a layer (repeat, lowest first)")
	c.Flags().StringVar(&typ, "type", "squashfs", "layer filesystem: squashfs or erofs")
	c.Flags().StringVar(&comp, "compression", "", "squashfs: zstd (default), gzip, xz; erofs: lz4hc (default), lz4, none")
	c.Flags().StringVar(&arch, "arch", "", "platform the layers' files are for: arm64, linux/arm/v7... (default: this machine's)")
	return c
}

// layerProgress reports the steps of making layers (image create, a
// build's layer step) on stderr (unless --json) and, on a terminal only, a
// live line with the bytes of the layer being written, then hashed (its
// digest and dm-verity tree), and the rate; piped output gets the step
// lines alone.
type layerProgress struct {
	w     io.Writer
	start time.Time
	live  bool        // stderr is a terminal
	quiet bool        // --json
	emit  func(v any) // --json: events on stdout (image create)
	mu    sync.Mutex
	drawn bool // the live line is on screen
	since time.Time
	phase string // what the live line shows; a new one restarts the rate
}

func newLayerProgress(cmd *cobra.Command, g *globals) *layerProgress {
	p := &layerProgress{w: cmd.ErrOrStderr(), start: time.Now(), live: isTerminal(cmd.ErrOrStderr()), quiet: g.json}
	if g.json {
		p.emit = jsonEvents(cmd.OutOrStdout())
	}
	return p
}

func (p *layerProgress) step(s string) {
	if p.quiet {
		p.emit(map[string]any{"event": "step", "step": s, "seconds": time.Since(p.start).Seconds()})
		return
	}
	p.printf("[%5.1fs] %s\n", time.Since(p.start).Seconds(), s)
}

// printf writes a line of its own (ending the live line first).
func (p *layerProgress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endLine()
	p.since = time.Now()
	fmt.Fprintf(p.w, format, args...)
}

func (p *layerProgress) written(layer int, n int64) {
	if p.quiet {
		p.emit(map[string]any{"event": "progress", "layer": layer, "written": n})
		return
	}
	p.draw(fmt.Sprintf("layer %d", layer), n, 0, "written")
}

// hashed shows the hashing of a layer (on a terminal only).
func (p *layerProgress) hashed(label string, done, total int64) {
	if !p.quiet {
		p.draw(label, done, total, "hashed (digest, verity)")
	}
}

// draw redraws the live line: "LABEL: N[/TOTAL] WHAT, RATE/s".
func (p *layerProgress) draw(label string, n, total int64, what string) {
	if !p.live {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if phase := label + what; phase != p.phase {
		p.phase, p.since = phase, time.Now()
	}
	amount := humanSize(n)
	if total > 0 {
		amount += " of " + humanSize(total)
	}
	rate := float64(n) / max(time.Since(p.since).Seconds(), 0.001)
	fmt.Fprintf(p.w, "\r\x1b[2K[%5.1fs]   %s: %s %s, %s/s", time.Since(p.start).Seconds(), label, amount, what, humanSize(int64(rate)))
	p.drawn = true
}

func (p *layerProgress) endLine() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
	p.phase = ""
}

func (p *layerProgress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endLine()
}

func printCreated(cmd *cobra.Command, g *globals, res *image.Created) error {
	if g.json {
		return printResultEvent(cmd.OutOrStdout(), res) // the last line of the event stream
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "%s %s\n", res.Ref, res.Descriptor.Digest)
	for i, l := range res.Layers {
		rh, _ := layer.RootHash(l)
		fmt.Fprintf(w, "  layer %d: %s %s verity %s\n", i+1, l.Digest, humanSize(l.Size), rh)
	}
	return nil
}

func imageVerifyCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "verify NAME[:TAG]",
		Short: "Check every blob digest and every layer block against its verity tree",
		Long: `Verify reads the whole image: the manifest and config digests, each layer's
digest and size, and every data and hash block of each layer against the verity
root hash in the manifest. It stops at the first failure and names the layer
and the block.`,
		Example: `  vessel image verify demo:1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.openStore()
			if err != nil {
				return err
			}
			report := func(r image.LayerResult) {
				if g.json || r.Err != "" {
					return
				}
				fmt.Fprintf(cmd.OutOrStdout(), "layer %d %s: ok (%d blocks, verity %s)\n", r.Index, r.Digest, r.Blocks, r.RootHash)
			}
			results, err := image.Verify(s, args[0], report)
			if g.json {
				out := map[string]any{"ref": args[0], "verified": err == nil, "layers": results}
				if err != nil {
					out["error"] = err.Error()
				}
				if perr := printJSON(cmd.OutOrStdout(), out); perr != nil {
					return perr
				}
			}
			if err != nil {
				return err
			}
			if !g.json {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: verified\n", args[0])
			}
			return nil
		},
	}
}

func imageConvertCmd(g *globals) *cobra.Command {
	var (
		typ, comp string
		rf        = registryFlags{quiet: true}
	)
	c := &cobra.Command{
		Use:   "convert oci:DIR[:TAG]|docker://HOST/REPO[:TAG] NAME[:TAG]",
		Short: "Convert a standard OCI image (tar layers) into verified layers",
		Long: `Convert reads an image with tar, tar+gzip or tar+zstd layers from an OCI
layout (as written by skopeo, umoci or buildah), checks every digest, and stores
it with one verified filesystem layer per tar layer. OCI whiteouts become
overlay whiteouts; tar entries that would escape the root are refused. Needs root.

The source may be a registry: docker://HOST/REPO[:TAG|@DIGEST] is copied
(digest-checked) into a temporary layout and converted in one step. It
may also be an archive: oci-archive:PATH[:TAG] or
docker-archive:PATH[:NAME[:TAG]] (docker save), unpacked under $TMPDIR and
removed afterwards. In oci:DIR:TAG (and in the archives) the path ends at the
first colon, as skopeo and stacker read it, so oci:./lay:a:b is the tag "a:b"
of ./lay.`,
		Example: `  vessel image convert docker://docker.io/library/busybox:latest busybox:1
  docker save busybox:latest -o busybox.tar
  vessel image convert docker-archive:busybox.tar busybox:1
  skopeo copy docker://docker.io/library/busybox:latest oci:./layout:busybox
  vessel image convert oci:./layout:busybox busybox:1`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var src image.Source
			r, err := reference.Parse(args[0])
			isArchive := err == nil && r.IsArchive()
			if err == nil && r.Transport == reference.Docker {
				// From a registry in one step: copy it (digest-checked)
				// into a temporary layout, convert, remove the layout.
				tmp, err := os.MkdirTemp("", "vessel-convert-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(tmp)
				c, finish, err := rf.client(cmd, g)
				if err != nil {
					return err
				}
				dst, _, err := g.location(cmd, "oci:"+tmp+":src", false)
				if err != nil {
					finish()
					return err
				}
				ref, err := registryRef("convert", args[0])
				if err != nil {
					finish()
					return err
				}
				_, err = c.Copy(cmd.Context(), registry.Registry(ref), dst)
				finish()
				if err != nil {
					return err
				}
				src, isArchive = image.Source{Dir: tmp, Tag: "src"}, false
			} else if !isArchive {
				if src, err = image.ParseSource(args[0]); err != nil {
					return usageError{err.Error()}
				}
			}
			f, epoch, s, err := g.layerWork(cmd, typ, comp)
			if err != nil {
				return err
			}
			if isArchive {
				l, err := archive.Open(cmd.Context(), r, "")
				if err != nil {
					return err
				}
				defer func() {
					if err := l.Close(); err != nil {
						fmt.Fprintf(cmd.ErrOrStderr(), "vessel: remove the unpacked %s: %v\n", args[0], err)
					}
				}()
				src = image.Source{Dir: l.Dir, Tag: l.Tag}
			}
			lp := newLayerProgress(cmd, g)
			res, err := image.Convert(cmd.Context(), s, src, args[1], image.ConvertOptions{Format: f, SourceDateEpoch: epoch, Progress: lp.step})
			lp.done()
			if err != nil {
				return err
			}
			return printCreated(cmd, g, res)
		},
	}
	c.Flags().StringVar(&typ, "type", "squashfs", "layer filesystem: squashfs or erofs")
	c.Flags().StringVar(&comp, "compression", "", "squashfs: zstd (default), gzip, xz; erofs: lz4hc (default), lz4, none")
	rf.add(c) // for docker:// sources
	return c
}

func imagesCmd(g *globals) *cobra.Command {
	var lf listFlags
	c := &cobra.Command{
		Use: "images",
		Example: `  vessel images
  vessel images --json
  vessel images -q                      # NAME:TAG, one per line: vessel rmi $(vessel images -q)
  vessel images --format '{{.Name}}:{{.Tag}} {{.Digest}}'
  vessel images --noheading`,
		Short: "List the images in the store",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := g.openStore()
			if err != nil {
				return err
			}
			list, err := s.List()
			if err != nil {
				return err
			}
			type row struct {
				Name    string    `json:"name"`
				Tag     string    `json:"tag"`
				Digest  string    `json:"digest"`
				Size    int64     `json:"size"`
				Created time.Time `json:"created"`
			}
			rows := []row{}
			for _, t := range list {
				r := row{Name: t.Name, Tag: t.Tag, Digest: string(t.Descriptor.Digest)}
				if img, err := image.Read(s, t.Name+":"+t.Tag); err == nil {
					r.Size = img.Size()
					if c := img.Config(); c.Created != nil {
						r.Created = *c.Created
					}
				}
				rows = append(rows, r)
			}
			ids := make([]string, len(rows))
			for i, r := range rows {
				ids[i] = r.Name + ":" + r.Tag
			}
			return lf.print(cmd.OutOrStdout(), g.json, listTable{rows: rows, ids: ids,
				header: "NAME\tTAG\tDIGEST\tSIZE\tCREATED",
				line: func(i int) string {
					r := rows[i]
					return fmt.Sprintf("%s\t%s\t%s\t%s\t%s", r.Name, r.Tag, shortDigest(r.Digest), humanSize(r.Size), r.Created.Format(time.RFC3339))
				}})
		},
	}
	lf.add(c.Flags(), "NAME:TAG")
	return c
}

func inspectCmd(g *globals) *cobra.Command {
	var arch string
	rf := registryFlags{quiet: true}
	c := &cobra.Command{
		Use:   "inspect NAME[:TAG] [--arch ARCH] | docker://HOST/REPO[:TAG|@DIGEST]",
		Short: "Show an image's digest, manifest, config and layers (in the store or a registry)",
		Long: `Show an image in the store: digest, size, platform, command, environment
and each layer with its verity root hash. With docker://HOST/REPO[:TAG|@DIGEST]
it reads the manifest (digest-checked) and config from the registry, as
skopeo inspect does, without pulling layers or storing anything.`,
		Example: "  vessel inspect demo:1\n  vessel inspect demo:1 --json | jq .layers\n  vessel inspect app --arch arm64      # one platform of a multi-arch image\n  vessel inspect docker://127.0.0.1:5000/demo:1 --plain-http",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.HasPrefix(args[0], "docker://") {
				return inspectRemote(cmd, g, &rf, args[0])
			}
			s, err := g.openStore()
			if err != nil {
				return err
			}
			var p ocispec.Platform
			if arch != "" {
				if p, err = platform.Parse(arch); err != nil {
					return usageError{fmt.Sprintf("--arch: %v", err)}
				}
			}
			d, err := s.ResolveImage(args[0], p)
			if err != nil {
				return err
			}
			img, err := image.ReadDescriptor(s, d, args[0])
			if err != nil {
				return fmt.Errorf("image %s: %w", args[0], err)
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), img)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "Image:    %s\nDigest:   %s\nSize:     %s\n", img.Ref(), img.Digest(), humanSize(img.Size()))
			if ps, err := s.Platforms(args[0]); err != nil {
				return err
			} else if len(ps) > 0 {
				idx, _ := s.Resolve(args[0])
				var names []string
				for _, q := range ps {
					names = append(names, platform.String(q))
				}
				fmt.Fprintf(w, "Index:    %s (%s)\n", idx.Digest, strings.Join(names, ", "))
			}
			c := img.Config()
			fmt.Fprintf(w, "Platform: %s\n", platform.String(platform.OfConfig(c)))
			if c.Created != nil {
				fmt.Fprintf(w, "Created:  %s\n", c.Created.Format(time.RFC3339))
			}
			if len(c.Config.Entrypoint)+len(c.Config.Cmd) > 0 {
				fmt.Fprintf(w, "Command:  %s\n", strings.Join(append(append([]string{}, c.Config.Entrypoint...), c.Config.Cmd...), " "))
			}
			for _, e := range c.Config.Env {
				fmt.Fprintf(w, "Env:      %s\n", e)
			}
			fmt.Fprintf(w, "Config:   %s\nLayers:\n", img.Manifest().Config.Digest)
			for i, l := range img.Layers() {
				fmt.Fprintf(w, "  %d. %s\n     media type:  %s\n     size:        %d\n     verity root: %s\n", i+1, l.Digest, l.MediaType, l.Size, orNone(l.RootHash))
			}
			return nil
		},
	}
	c.Flags().StringVar(&arch, "arch", "", "for a multi-arch image: the platform to show (default: this machine's)")
	rf.add(c)
	return c
}

func rmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "rm NAME[:TAG]...",
		Example: `  vessel rm demo:1
  vessel rmi demo:1 demo:2
  vessel gc`,
		Aliases: []string{"rmi"},
		Short:   "Remove tags (blobs stay until 'vessel gc'); also vessel rmi",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.openStore()
			if err != nil {
				return err
			}
			for _, ref := range args {
				d, err := s.Untag(ref)
				if err != nil {
					return err
				}
				if !g.json {
					fmt.Fprintf(cmd.OutOrStdout(), "untagged %s (%s)\n", ref, d.Digest)
				}
			}
			return nil
		},
	}
}

func gcCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use: "gc",
		Example: `  vessel rm demo:1 && vessel gc
  vessel gc --json`,
		Short: "Delete blobs that no tag references",
		Long: `gc deletes every blob that no tagged image, nested index or referrer
(such as a signature) reaches, and stale temp files from interrupted writes:
partial downloads that no running pull holds (a pull that failed on a full
disk removes its own) and other temp files older than an hour. It waits for
running writers, never deletes a referenced blob, and deletes nothing when a
manifest it must follow cannot be parsed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := g.openStore()
			if err != nil {
				return err
			}
			res, err := s.GC()
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), res)
			}
			temp := ""
			if len(res.Temp) > 0 {
				temp = fmt.Sprintf(" and %d stale temp files", len(res.Temp))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d blobs%s, %s\n", len(res.Removed), temp, humanSize(res.Bytes))
			return nil
		},
	}
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// inspectRemote shows an image in a registry without pulling it.
func inspectRemote(cmd *cobra.Command, g *globals, rf *registryFlags, arg string) error {
	ref, err := registryRef("inspect", arg)
	if err != nil {
		return err
	}
	c, finish, err := rf.client(cmd, g)
	if err != nil {
		return err
	}
	r, err := c.Inspect(cmd.Context(), ref)
	finish()
	if err != nil {
		return err
	}
	if g.json {
		return printJSON(cmd.OutOrStdout(), r)
	}
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "Image:    %s\nDigest:   %s\nType:     %s\n", arg, r.Descriptor.Digest, r.Descriptor.MediaType)
	if r.Index != nil {
		for _, m := range r.Index.Manifests {
			p := "-"
			if m.Platform != nil {
				p = m.Platform.OS + "/" + m.Platform.Architecture
				if m.Platform.Variant != "" {
					p += "/" + m.Platform.Variant
				}
			}
			fmt.Fprintf(w, "Manifest: %s %s (%s)\n", p, m.Digest, humanSize(m.Size))
		}
		return nil
	}
	var cfg ocispec.Image
	_ = json.Unmarshal(r.Config, &cfg)
	fmt.Fprintf(w, "Platform: %s/%s\n", cfg.OS, cfg.Architecture)
	if cfg.Created != nil {
		fmt.Fprintf(w, "Created:  %s\n", cfg.Created.Format(time.RFC3339))
	}
	if len(cfg.Config.Entrypoint)+len(cfg.Config.Cmd) > 0 {
		fmt.Fprintf(w, "Command:  %s\n", strings.Join(append(append([]string{}, cfg.Config.Entrypoint...), cfg.Config.Cmd...), " "))
	}
	for _, e := range cfg.Config.Env {
		fmt.Fprintf(w, "Env:      %s\n", e)
	}
	for i, l := range r.Image.Layers {
		verity := "no verity root hash (a tar layer: vessel image convert makes it verified)"
		if h, ok := layer.RootHash(l); ok {
			verity = "verity " + h
		}
		fmt.Fprintf(w, "Layer %d:  %s %s %s, %s\n", i+1, l.Digest, humanSize(l.Size), l.MediaType, verity)
	}
	return nil
}
