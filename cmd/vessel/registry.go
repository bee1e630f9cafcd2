package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/vesselos/vessel/internal/archive"
	"github.com/vesselos/vessel/internal/image"
	"github.com/vesselos/vessel/internal/layer"
	"github.com/vesselos/vessel/internal/reference"
	"github.com/vesselos/vessel/internal/registry"
)

func init() {
	addCommand(pushCmd)
	addCommand(pullCmd)
	addCommand(copyCmd)
}

const registryHelp = `
Registry references are docker://HOST/REPO[:TAG|@sha256:DIGEST]. Credentials
come from --creds, --authfile, $REGISTRY_AUTH_FILE,
$XDG_RUNTIME_DIR/containers/auth.json or ~/.docker/config.json (basic and
bearer token flows). TLS uses the system roots plus --ca-file; --insecure
skips certificate checks and --plain-http talks plain HTTP (development
registries on loopback only: it is never implied).

Progress bars go to stderr on a terminal; --json prints one event per line
and a final {"event":"result",...} line. See docs/registry.md.`

// registryFlags are the connection flags every registry command takes.
type registryFlags struct {
	plainHTTP, insecure     bool
	caFile, authFile, creds string
	jobs                    int
	maxBlobSize             string
	readTimeout             time.Duration
	quiet                   bool // no progress events or bars (inspect): retry notes only
}

func (f *registryFlags) add(c *cobra.Command) {
	c.Flags().BoolVar(&f.plainHTTP, "plain-http", false, "talk plain HTTP to the registry (loopback development registries)")
	c.Flags().BoolVar(&f.insecure, "insecure", false, "accept any TLS certificate from the registry")
	c.Flags().StringVar(&f.caFile, "ca-file", "", "also trust these PEM CA certificates for the registry's TLS")
	c.Flags().StringVar(&f.authFile, "authfile", "", "read credentials only from this auth.json")
	c.Flags().StringVar(&f.creds, "creds", "", "USER:PASSWORD for the registry (instead of an auth file)")
	c.Flags().IntVar(&f.jobs, "jobs", 4, "blobs transferred at once")
	c.Flags().StringVar(&f.maxBlobSize, "max-blob-size", "64G", "refuse layers and configs larger than this (bytes, or with a K, M, G or T suffix)")
	c.Flags().DurationVar(&f.readTimeout, "read-timeout", registry.DefaultReadTimeout, "give up on a registry that sends nothing for this long (then retry)")
}

// parseSize reads "123", "512K", "64M", "64G" or "1T" (powers of 1024).
func parseSize(arg string) (int64, error) {
	s, mult := arg, int64(1)
	if n := len(s); n > 0 {
		if i := strings.IndexByte("KMGT", s[n-1]&^0x20); i >= 0 {
			mult = 1 << (10 * (i + 1))
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 || v > math.MaxInt64/mult {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with K, M, G or T", arg)
	}
	return v * mult, nil
}

// client builds a registry client whose progress goes to the command's
// outputs; finish stops the progress display.
func (f *registryFlags) client(cmd *cobra.Command, g *globals) (*registry.Client, func(), error) {
	opts := registry.Options{PlainHTTP: f.plainHTTP, Insecure: f.insecure, CAFile: f.caFile, AuthFile: f.authFile, Jobs: f.jobs,
		ReadTimeout: f.readTimeout}
	if f.maxBlobSize != "" {
		n, err := parseSize(f.maxBlobSize)
		if err != nil {
			return nil, nil, usageError{"--max-blob-size: " + err.Error()}
		}
		opts.MaxBlobSize = n
	}
	if f.creds != "" {
		u, p, ok := strings.Cut(f.creds, ":")
		if !ok {
			return nil, nil, usageError{"--creds: want USER:PASSWORD"}
		}
		opts.Credentials = &registry.Credentials{Username: u, Password: p}
	}
	finish := func() {}
	switch {
	case g.json && !f.quiet:
		emit := jsonEvents(cmd.OutOrStdout())
		opts.Progress = func(e registry.Event) { emit(e) }
	case isTerminal(cmd.ErrOrStderr()) && !f.quiet:
		b := &bars{w: cmd.ErrOrStderr(), start: time.Now()}
		opts.Progress = b.event
		finish = b.finish
	default:
		// No bars when piped, but retries are said: an unreachable
		// registry must not look like a hang.
		w := cmd.ErrOrStderr()
		opts.Progress = func(e registry.Event) {
			if e.Kind == registry.EventRetry {
				warnf(w, "note", "%s", retryText(e))
			}
		}
	}
	c, err := registry.New(opts)
	return c, finish, err
}

// location parses a command-line location and opens the store only when
// the location is in it. An archive (oci-archive:, docker-archive:) can only
// be a source: it is unpacked into a temporary layout under $TMPDIR, which
// done removes (call it on every path).
func (g *globals) location(cmd *cobra.Command, s string, source bool) (e registry.Endpoint, done func(), err error) {
	done = func() {}
	r, err := reference.Parse(s)
	if err != nil {
		return e, done, usageError{err.Error()}
	}
	if r.IsArchive() {
		if !source {
			return e, done, usageError{fmt.Sprintf("%s: archives are sources only: write a layout (oci:DIR[:TAG]) and, if you need the tar, skopeo copy oci:DIR:TAG %s", s, s)}
		}
		l, err := archive.Open(cmd.Context(), r, "")
		if err != nil {
			return e, done, err
		}
		done = func() {
			if err := l.Close(); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "vessel: remove the unpacked %s: %v\n", s, err)
			}
		}
		return registry.Layout(l.Dir, l.Tag), done, nil
	}
	if e, err = registry.Location(r, nil); err != nil {
		return e, done, err
	}
	if e.IsStore() {
		st, err := g.openStore()
		if err != nil {
			return e, done, err
		}
		e = e.WithStore(st)
	}
	return e, done, nil
}

// archiveName is s if it names an archive (shown instead of the temporary
// layout it was unpacked into), else "".
func archiveName(s string) string {
	if r, err := reference.Parse(s); err == nil && r.IsArchive() {
		return s
	}
	return ""
}

// registryRef parses a command-line registry reference,
// docker://HOST/REPO[:TAG|@sha256:DIGEST], with the one reference parser.
func registryRef(what, s string) (registry.Reference, error) {
	r, err := reference.Parse(s)
	if err != nil {
		return registry.Reference{}, usageError{what + ": " + err.Error()}
	}
	if r.Transport != reference.Docker {
		return registry.Reference{}, usageError{fmt.Sprintf("%s: %q is not a registry reference: want docker://HOST/REPO[:TAG|@sha256:DIGEST]", what, s)}
	}
	return registry.FromRef(r), nil
}

// locations parses a SRC DST pair of command-line locations; done removes
// an unpacked archive source.
func (g *globals) locations(cmd *cobra.Command, src, dst string) (s, d registry.Endpoint, done func(), err error) {
	// the destination first: a bad one fails before an archive is unpacked
	d, ddone, err := g.location(cmd, dst, false)
	if err != nil {
		return s, d, ddone, err
	}
	s, done, err = g.location(cmd, src, true)
	return s, d, done, err
}

// printResult prints a copy's outcome: one line, or the final JSON event.
func printResult(cmd *cobra.Command, g *globals, verb string, r *registry.Result) error {
	if g.json {
		return printResultEvent(cmd.OutOrStdout(), r)
	}
	var extra []string
	if r.Existing > 0 {
		extra = append(extra, fmt.Sprintf("%d already there", r.Existing))
	}
	if r.Mounted > 0 {
		extra = append(extra, fmt.Sprintf("%d mounted", r.Mounted))
	}
	more := ""
	if len(extra) > 0 {
		more = ", " + strings.Join(extra, ", ")
	}
	_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s %s to %s\n  %s, %d blobs, %s, %s transferred%s\n", verb, r.Source, r.Destination,
		r.Descriptor.Digest, r.Blobs, humanSize(r.Bytes), humanSize(r.Transferred), more)
	return err
}

func pushCmd(g *globals) *cobra.Command {
	var rf registryFlags
	c := &cobra.Command{
		Use:   "push IMAGE docker://HOST/REPO[:TAG]",
		Short: "Push an image from the store (or an OCI layout) to a registry",
		Long: `push copies an image to a registry with its exact bytes: the digest in the
registry is the digest in the store. Blobs the registry already has are
skipped, blobs in another repository of the same registry are mounted, and
the tag is set last.` + registryHelp,
		Example: `  vessel push demo:1 docker://registry.example.com/acme/demo:1
  vessel push demo:1 docker://127.0.0.1:5000/demo:1 --plain-http
  vessel push oci:./layout:v1 docker://registry.example.com/acme/demo:v1 --authfile auth.json`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, dst, done, err := g.locations(cmd, args[0], args[1])
			defer done()
			if err != nil {
				return err
			}
			if _, ok := dst.IsRegistry(); !ok {
				return usageError{"push: the destination must be docker://HOST/REPO[:TAG] (use 'vessel copy' for other destinations)"}
			}
			return runCopy(cmd, g, &rf, "pushed", src, dst, false, archiveName(args[0]))
		},
	}
	rf.add(c)
	return c
}

func pullCmd(g *globals) *cobra.Command {
	var rf registryFlags
	var verify bool
	c := &cobra.Command{
		Use:   "pull docker://HOST/REPO[:TAG|@DIGEST] [NAME[:TAG]]",
		Short: "Pull an image from a registry into the store",
		Long: `pull copies an image from a registry into the store with its exact bytes.
Each blob is checked against its digest and size before it enters the store;
an interrupted pull keeps what it received (under <root>/tmp) and the next
pull continues it with a Range request. The store name defaults to the
repository and tag (for a digest: the repository and sha256-<12 hex>).
--verify then checks every layer block against its verity root hash.` + registryHelp,
		Example: `  vessel pull docker://registry.example.com/acme/demo:1
  vessel pull docker://127.0.0.1:5000/demo@sha256:0f1e... demo:pinned --plain-http --verify`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, err := registryRef("pull", args[0])
			if err != nil {
				if archiveName(args[0]) != "" {
					return usageError{"pull: the source must be docker://HOST/REPO[:TAG|@DIGEST] (use 'vessel copy' for archives)"}
				}
				return err
			}
			src := registry.Registry(ref)
			name := ref.Repo + ":" + ref.Tag
			if ref.Digest != "" {
				name = ref.Repo + ":sha256-" + ref.Digest.Encoded()[:12]
			}
			if len(args) == 2 {
				name = args[1]
			}
			dst, done, err := g.location(cmd, name, false)
			defer done()
			if err != nil {
				return err
			}
			if !dst.IsStore() {
				return usageError{"pull: the destination is a store NAME[:TAG] (use 'vessel copy' for other destinations)"}
			}
			return runCopy(cmd, g, &rf, "pulled", src, dst, verify, "")
		},
	}
	rf.add(c)
	c.Flags().BoolVar(&verify, "verify", false, "after the pull, verify every layer block against its verity root hash")
	return c
}

func copyCmd(g *globals) *cobra.Command {
	var rf registryFlags
	c := &cobra.Command{
		Use:   "copy SRC DST",
		Short: "Copy an image between registries, OCI layouts and the store",
		Long: `copy moves an image (a manifest or an index, with everything it references)
between any two of: docker://HOST/REPO[:TAG|@DIGEST], oci:DIR[:TAG] and a
store NAME[:TAG] (NAME@sha256:DIGEST as a source). Manifests keep their exact
bytes, so digests never change; every blob is checked on the way. Between two
repositories of one registry, blobs are mounted instead of copied.

A source may also be an archive: oci-archive:PATH[:TAG] (a tar of an OCI
layout) or docker-archive:PATH[:NAME[:TAG]] (docker save); it is unpacked
under $TMPDIR, read with the same checks and removed afterwards.

References are read as skopeo reads them: in oci:DIR:TAG (and in the
archives) the path ends at the first colon; docker://busybox is
docker.io/library/busybox:latest. Other transports (dir:/PATH,
containers-storage:, ...) are refused with "unsupported transport"; store
names are lower case. See docs/image.md#references.` + registryHelp,
		Example: `  vessel copy docker://registry.example.com/acme/demo:1 oci:./demo-layout:1
  vessel copy oci:./demo-layout:1 demo:1
  vessel copy docker-archive:demo.tar:demo:2 oci:./demo-layout:2
  vessel copy oci-archive:demo-oci.tar:2 demo:2
  vessel copy docker://reg-a.example.com/acme/demo:1 docker://reg-b.example.com/mirror/demo:1`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, dst, done, err := g.locations(cmd, args[0], args[1])
			defer done()
			if err != nil {
				return err
			}
			return runCopy(cmd, g, &rf, "copied", src, dst, false, archiveName(args[0]))
		},
	}
	rf.add(c)
	return c
}

// runCopy copies src to dst; srcName, if set, is shown as the source (an
// archive's name rather than its temporary layout).
func runCopy(cmd *cobra.Command, g *globals, rf *registryFlags, verb string, src, dst registry.Endpoint, verify bool, srcName string) error {
	c, finish, err := rf.client(cmd, g)
	if err != nil {
		return err
	}
	var prev ocispec.Descriptor // what the tag named before, restored if verification fails
	if verify && dst.IsStore() {
		if st, err := g.openStore(); err == nil {
			prev, _ = st.Resolve(dst.String())
		}
	}
	res, err := c.Copy(cmd.Context(), src, dst)
	finish()
	if err != nil {
		return err
	}
	if srcName != "" {
		res.Source = srcName
	}
	if verify {
		st, err := g.openStore()
		if err != nil {
			return err
		}
		layers, err := image.Verify(st, dst.String(), nil)
		if err != nil {
			// Never leave a tag on what failed verification: the tag goes
			// back to what it named before (or away); the blobs stay for
			// gc. A tar-layer image has no verity to check: say how to
			// convert it.
			if prev.Digest != "" {
				err = errors.Join(err, st.Tag(dst.String(), prev))
			} else if _, uerr := st.Untag(dst.String()); uerr != nil {
				err = errors.Join(err, uerr)
			}
			if errors.Is(err, layer.ErrNoVerity) || errors.Is(err, image.ErrUnverifiable) {
				return fmt.Errorf("%s %s, but it has tar layers without verity (an ordinary OCI or Docker image), so it was not tagged; convert it instead: vessel image convert %s %s: %w", verb, res.Source, res.Source, dst.String(), err)
			}
			return fmt.Errorf("%s, but verification failed, so it was not tagged: %w", verb, err)
		}
		var blocks uint64
		for _, l := range layers {
			blocks += l.Blocks
		}
		if g.json {
			jsonEvents(cmd.OutOrStdout())(map[string]any{"event": "verified", "image": dst.String(), "layers": len(layers), "dataBlocks": blocks})
		} else {
			defer fmt.Fprintf(cmd.OutOrStdout(), "  verified: %d layers, %d data blocks checked against their verity root hashes\n", len(layers), blocks)
		}
	}
	return printResult(cmd, g, verb, res)
}

// bars draws one progress bar per active blob and a total on a terminal.
type bars struct {
	mu     sync.Mutex
	w      io.Writer
	start  time.Time
	total  int64
	count  int
	done   map[digest.Digest]int64
	sizes  map[digest.Digest]int64
	active []digest.Digest
	lines  int
	last   time.Time
}

func (b *bars) event(e registry.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done == nil {
		b.done, b.sizes = map[digest.Digest]int64{}, map[digest.Digest]int64{}
	}
	switch e.Kind {
	case registry.EventPlan:
		b.total += e.Size
		b.count += e.Count
	case registry.EventStart:
		b.sizes[e.Digest] = e.Size
		b.active = append(b.active, e.Digest)
	case registry.EventProgress:
		b.done[e.Digest] = e.Done
	case registry.EventExists, registry.EventBlobDone, registry.EventMounted:
		b.done[e.Digest] = e.Size
		for i, d := range b.active {
			if d == e.Digest {
				b.active = append(b.active[:i], b.active[i+1:]...)
				break
			}
		}
	case registry.EventRetry:
		b.clear()
		fmt.Fprintln(b.w, retryText(e))
	default:
		return
	}
	if time.Since(b.last) >= 100*time.Millisecond || e.Kind != registry.EventProgress {
		b.draw()
	}
}

func (b *bars) clear() {
	for ; b.lines > 0; b.lines-- {
		fmt.Fprint(b.w, "\x1b[1A\x1b[2K")
	}
}

func bar(done, size int64, width int) string {
	n := width
	if size > 0 {
		n = int(int64(width) * min(done, size) / size)
	}
	return "[" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "]"
}

func (b *bars) draw() {
	b.last = time.Now()
	b.clear()
	for _, d := range b.active {
		fmt.Fprintf(b.w, "%s %s %9s / %-9s\n", shortDigest(d.String()), bar(b.done[d], b.sizes[d], 30), humanSize(b.done[d]), humanSize(b.sizes[d]))
		b.lines++
	}
	var all int64
	for _, n := range b.done {
		all += n
	}
	secs := time.Since(b.start).Seconds()
	fmt.Fprintf(b.w, "total   %s %9s / %-9s %6.1f MB/s\n", bar(all, b.total, 30), humanSize(all), humanSize(b.total), float64(all)/1e6/max(secs, 0.001))
	b.lines++
}

func (b *bars) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done != nil {
		b.active = nil
		b.draw()
	}
}

// retryText says what a retry event retries, why, and when.
func retryText(e registry.Event) string {
	if e.Digest == "" {
		return fmt.Sprintf("%s; retry %d of at most %d in %s", e.Error, e.Attempt, e.Of, e.Wait)
	}
	return fmt.Sprintf("retrying %s: %s", shortDigest(e.Digest.String()), e.Error)
}
