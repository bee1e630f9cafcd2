package mount

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/vesselos/vessel/internal/layer"
)

// Mode is how layers are attached and verified.
type Mode string

const (
	// ModeVerity attaches each blob to a loop device, opens a dm-verity
	// device over it and mounts that: the kernel checks every block read.
	ModeVerity Mode = "dm-verity"
	// ModeUserspace verifies each blob in userspace (once per boot, cached)
	// and mounts the loop device directly. Used when the kernel has no
	// device-mapper.
	ModeUserspace Mode = "userspace"
	// ModeFuse verifies in userspace and mounts with squashfuse; overlay
	// uses user xattrs. Used inside a user namespace, where the kernel
	// refuses squashfs and erofs mounts.
	ModeFuse Mode = "fuse"
)

// Options says what kind of root filesystem to make.
type Options struct {
	// Writable stacks a fresh, empty upper layer on top. Without it the
	// result is read-only.
	Writable bool
	// Upper, when set with Writable, is the directory whose upper/ and
	// work/ subdirectories take the writes (it must be on a filesystem
	// overlayfs accepts as upper, and is not removed by Unmount). By default
	// a fresh directory under the run directory (<run>/uppers/ID) is used
	// and removed.
	Upper string
	// UIDMap and GIDMap, when set (with Writable), show the image to a
	// container in a user namespace with these maps: every layer is an
	// idmapped mount (id N on disk is seen as the host id N maps to), so
	// layers stay owned by 0..65535 on disk and shared, and the upper
	// directory's root belongs to the mapped root. Set both or neither.
	UIDMap, GIDMap []IDMapping
	// HostRoot mounts the image as the machine's root filesystem (the
	// initrd's verified boot): its overlay is mounted without nosuid and
	// nodev, so the host image's setuid programs and device nodes work as
	// on any root. Only an image of a verified system manifest
	// (SystemImage) may be a host root; the layer mounts under the run
	// directory keep nosuid,nodev.
	HostRoot bool
}

// IDMapping is one line of a uid_map or gid_map: Size ids from
// ContainerID inside are HostID.. outside.
type IDMapping struct {
	ContainerID uint32 `json:"containerID"`
	HostID      uint32 `json:"hostID"`
	Size        uint32 `json:"size"`
}

// IDMap is a plan's id mapping.
type IDMap struct {
	UIDs []IDMapping `json:"uidMappings"`
	GIDs []IDMapping `json:"gidMappings"`
}

// root is the host id of id 0 inside, and whether it is mapped.
func root(m []IDMapping) (uint32, bool) {
	for _, e := range m {
		if e.ContainerID == 0 && e.Size > 0 {
			return e.HostID, true
		}
	}
	return 0, false
}

// Plan is everything Manager.Mount will do for one image, as data.
type Plan struct {
	ID      string       `json:"id"`
	Image   string       `json:"image"`
	Digest  string       `json:"digest"`
	Mode    Mode         `json:"mode"`
	Layers  []LayerMount `json:"layers"` // bottom first
	Target  string       `json:"target"`
	Upper   string       `json:"upper,omitempty"` // upper and work dirs live here
	OwnUp   bool         `json:"ownUpper,omitempty"`
	Overlay Mount        `json:"overlay"`
	// IDMap: the layers are idmapped mounts and the overlay is made with
	// the new mount API (see Options.UIDMap).
	IDMap *IDMap `json:"idmap,omitempty"`
}

// LayerMount is one shared, read-only layer mount.
type LayerMount struct {
	Digest string `json:"digest"`
	Blob   string `json:"blob"`
	Dir    string `json:"dir"` // the shared mount point
	// Loop attaches the blob (read-only); SizeLimit is the filesystem image
	// alone, or the whole blob when a verity device reads its tree from it.
	Loop   Loop    `json:"loop"`
	Verity *Verity `json:"verity,omitempty"`
	// VerifyInUserspace is set when no kernel verity protects the mount.
	VerifyInUserspace bool  `json:"verifyInUserspace,omitempty"`
	Mount             Mount `json:"mount"`
	geometry          layer.Geometry
}

// Loop is a loop device attachment.
type Loop struct {
	File      string `json:"file"`
	SizeLimit int64  `json:"sizeLimit"`
}

// Mount is one mount(2) call: the source "{loop}" or "{verity}" stands for
// the device created by the preceding step.
type Mount struct {
	Type    string   `json:"type"`
	Source  string   `json:"source"`
	Target  string   `json:"target"`
	Options []string `json:"options,omitempty"`
}

// hostSafe are the flags of every mount vessel makes: layer mounts and
// overlays are reachable from the host (vessel mount targets, the layer
// mounts under the run directory), where a setuid file or a device node
// shipped in an image must stay inert. (Containers lose nothing: they run
// with no_new_privs, and the runtime gives them their own /dev.)
var hostSafe = []string{"nosuid", "nodev"}

// layerOptions are the options of a layer mount.
var layerOptions = append([]string{"ro"}, hostSafe...)

// Placeholders for devices only known when the plan is applied.
const (
	LoopDevice   = "{loop}"
	VerityDevice = "{verity}"
)

// Paths under the run directory.
func layersDir(run string) string       { return filepath.Join(run, "layers") }
func mountsDir(run string) string       { return filepath.Join(run, "mounts") }
func verifiedDir(run string) string     { return filepath.Join(run, "verified") }
func layerRecordsDir(run string) string { return filepath.Join(run, "layer-records") }
func upperDir(run, id string) string    { return filepath.Join(run, "uppers", id) }

// maxOverlayOptions is the page-size limit on mount(2) option data.
const maxOverlayOptions = 4095

// NewPlan computes how img is mounted at target under the run directory
// (normally /run/vessel). id names the mount's state; it must be unique
// among live mounts.
func NewPlan(run, id string, img *Image, target string, mode Mode, opt Options) (*Plan, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(target) {
		return nil, fmt.Errorf("mount target %q is not an absolute path", target)
	}
	if err := img.valid(); err != nil {
		return nil, err
	}
	if len(img.layers) == 0 && !opt.Writable {
		return nil, fmt.Errorf("image %s has no layers", img.name)
	}
	if opt.HostRoot && !img.system {
		return nil, fmt.Errorf("image %s cannot be a machine's root: only an image of a verified system manifest can", img.name)
	}
	p := &Plan{ID: id, Image: img.name, Digest: img.Digest().String(), Mode: mode, Target: filepath.Clean(target)}
	for _, l := range img.layers {
		p.Layers = append(p.Layers, planLayer(run, l, mode))
	}
	var lowers []string
	for i := len(p.Layers) - 1; i >= 0; i-- {
		lowers = append(lowers, p.Layers[i].Dir)
	}
	if len(lowers) == 0 {
		lowers = []string{emptyLower(run)} // see Empty
	}
	for _, d := range lowers {
		if strings.ContainsAny(d, ":,") {
			return nil, fmt.Errorf("layer directory %q contains ':' or ',', which overlayfs cannot take", d)
		}
	}
	if (len(opt.UIDMap) == 0) != (len(opt.GIDMap) == 0) {
		return nil, errors.New("an idmapped mount needs both uid and gid maps")
	}
	if len(opt.UIDMap) > 0 {
		if !opt.Writable {
			return nil, errors.New("an idmapped image mount must be writable (it is a container root)")
		}
		if mode == ModeFuse {
			return nil, errors.New("idmapped layers need kernel layer mounts: per-service user namespaces need vessel running as root, not rootless")
		}
		_, ok1 := root(opt.UIDMap)
		_, ok2 := root(opt.GIDMap)
		if !ok1 || !ok2 {
			return nil, errors.New("an idmapped mount must map id 0")
		}
		p.IDMap = &IDMap{UIDs: opt.UIDMap, GIDs: opt.GIDMap}
	}
	p.Overlay = Mount{Type: "overlay", Source: "overlay", Target: p.Target}
	opts := []string{"lowerdir=" + strings.Join(lowers, ":")}
	switch {
	case opt.Writable:
		p.Upper = opt.Upper
		if p.Upper != "" && (!filepath.IsAbs(p.Upper) || strings.Contains(p.Upper, ",")) {
			return nil, fmt.Errorf("upper directory %q must be an absolute path without ',' (overlayfs takes ',' as an option separator)", p.Upper)
		}
		if p.Upper == "" {
			p.Upper = upperDir(run, id)
			p.OwnUp = true
		}
		opts = append(opts, "upperdir="+filepath.Join(p.Upper, "upper"), "workdir="+filepath.Join(p.Upper, "work"))
		if p.OwnUp {
			// A throwaway upper needs no syncs (Linux 5.10+): it is
			// deleted on unmount and after a crash.
			opts = append(opts, "volatile")
		}
	case len(lowers) == 1:
		// overlayfs wants two lower layers when there is no upper: a
		// read-only bind of the single layer is the same thing.
		p.Overlay = Mount{Type: "bind", Source: lowers[0], Target: p.Target, Options: []string{"bind", "ro", "nosuid", "nodev"}}
		return p, nil
	}
	if mode == ModeFuse {
		opts = append(opts, "userxattr")
	}
	if !opt.Writable {
		opts = append(opts, "ro")
	}
	if n := len(strings.Join(opts, ",")); n > maxOverlayOptions {
		return nil, fmt.Errorf("image %s has %d layers: the overlay options are %d bytes, more than the kernel's %d", img.name, len(lowers), n, maxOverlayOptions)
	}
	if !opt.HostRoot {
		opts = append(opts, hostSafe...)
	}
	p.Overlay.Options = opts
	return p, nil
}

func planLayer(run string, l imageLayer, mode Mode) LayerMount {
	lm := LayerMount{
		Digest:   l.digest.String(),
		Blob:     l.blob,
		Dir:      filepath.Join(layersDir(run), l.hex()),
		Loop:     Loop{File: l.blob, SizeLimit: l.geometry.DataSize},
		geometry: l.geometry,
	}
	fsType := string(l.geometry.Format.Type)
	switch mode {
	case ModeVerity:
		lm.Loop.SizeLimit = l.size
		lm.Verity = newVerity(l)
		lm.Mount = Mount{Type: fsType, Source: VerityDevice, Target: lm.Dir, Options: layerOptions}
	case ModeFuse:
		lm.VerifyInUserspace = true
		lm.Loop = Loop{}
		lm.Mount = Mount{Type: "fuse." + fuseDriver(l.geometry.Format.Type), Source: l.blob, Target: lm.Dir, Options: layerOptions}
	default:
		lm.VerifyInUserspace = true
		lm.Mount = Mount{Type: fsType, Source: LoopDevice, Target: lm.Dir, Options: layerOptions}
	}
	return lm
}

func fuseDriver(t layer.Type) string {
	if t == layer.Erofs {
		return "erofsfuse"
	}
	return "squashfuse"
}

func checkID(id string) error {
	if id == "" || len(id) > 128 {
		return fmt.Errorf("mount id %q must be 1 to 128 characters", id)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') || id[0] == '.' {
			return fmt.Errorf("mount id %q may only use a-z, 0-9, '-', '_' and '.'", id)
		}
	}
	return nil
}
