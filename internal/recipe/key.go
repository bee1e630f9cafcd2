package recipe

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/opencontainers/go-digest"
)

// keyVersion changes whenever the meaning of a key changes (what it covers,
// how the executor turns the inputs into a layer), so old cache entries
// become misses instead of wrong hits.
const keyVersion = "vessel-build-key/v1"

// historyVersion names the shape of the history entries a build writes;
// a new shape changes every config key (new configs, no new layers).
const historyVersion = "created_by/v2"

// KeyOptions are the inputs of a cache key that the recipe does not hold:
// what the executor resolved or was told on the command line.
type KeyOptions struct {
	// BaseDigest identifies what a build sees of the base image: the
	// executor passes a digest over its layer digests and the parts of its
	// config a run sees, environment and platform (for built, the image built or found in the cache
	// for it; for tar, oci and docker, the base after conversion to vessel
	// layers), not its manifest digest or creation time, which change
	// nothing the build sees. Empty for scratch, required otherwise.
	BaseDigest digest.Digest
	// BaseConfig identifies the base's whole config (history, times):
	// part of the config key only, since the image's config inherits it.
	BaseConfig digest.Digest
	// LayerType is the layer format (squashfs or erofs, with compression).
	LayerType string
	// SourceDateEpoch is $SOURCE_DATE_EPOCH as given, or "".
	SourceDateEpoch string
	// Resolve finds stacker:// imports; see Resolver.
	Resolve Resolver
	// Annotations are manifest annotations the executor adds besides the
	// recipe's (stacker's stacker_yaml and git_version): part of the
	// config key.
	Annotations map[string]string
	// Author is the config's author (and its history entries'): part of
	// the config key, so another author writes a new config and runs
	// nothing again.
	Author string
}

// Keys are the two cache keys of an image.
//
// Layer decides the filesystem change: it covers the base (by manifest
// digest), the platform, the layer type, SOURCE_DATE_EPOCH, the image name
// (the build sees it as STACKER_LAYER_NAME), the run script, the build
// environment (environment and build_env, sorted), and every import: where
// it lands, its uid/gid/mode overrides, and for every file its path, type,
// permission bits, size, sha256 and symlink target, but not mtimes or host
// ownership; and the host binds (source and destination, not contents).
// Equal layer keys mean `run` need not execute again.
//
// Config covers the layer key and every field that only shapes the image
// config or manifest: entrypoint, cmd, full_command, environment, labels,
// annotations, working_dir, volumes (as a set), runtime_user, platform.
// Changing only those changes the config key, not the layer key: the
// executor reuses the layer and writes a new config and manifest.
//
// An image built on another changes key when its base does, through
// BaseDigest: the base's new layers or run-visible config are part of the
// layer key, its whole config (BaseConfig) part of the config key.
type Keys struct {
	Layer  digest.Digest
	Config digest.Digest
}

type keyBase struct {
	Type   FromType      `json:"type"`
	Digest digest.Digest `json:"digest,omitempty"`
}

type keyImport struct {
	Target  string  `json:"target"`
	InImage bool    `json:"in_image"`
	UID     *int    `json:"uid,omitempty"`
	GID     *int    `json:"gid,omitempty"`
	Entries []entry `json:"entries"`
}

type layerKeyDoc struct {
	Version         string      `json:"version"`
	Name            string      `json:"name"`
	Base            keyBase     `json:"base"`
	Platform        string      `json:"platform"`
	LayerType       string      `json:"layer_type"`
	SourceDateEpoch string      `json:"source_date_epoch"`
	Script          string      `json:"script"`
	Env             []string    `json:"env"`
	Legacy          bool        `json:"legacy_import"`
	Imports         []keyImport `json:"imports"`
	// Binds are the host binds (source and destination, in file order):
	// changing one changes the key. Their contents are not read, as in
	// stacker: use --no-cache when only what a bind holds changed.
	Binds []keyBind `json:"binds,omitempty"`
}

type keyBind struct {
	Source string `json:"source"`
	Dest   string `json:"dest"`
}

type configKeyDoc struct {
	Version     string            `json:"version"`
	Layer       digest.Digest     `json:"layer"`
	Platform    string            `json:"platform"`
	Entrypoint  []string          `json:"entrypoint"`
	Cmd         []string          `json:"cmd"`
	FullCommand []string          `json:"full_command"`
	Environment map[string]string `json:"environment"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	WorkingDir  string            `json:"working_dir"`
	Volumes     []string          `json:"volumes"`
	RuntimeUser string            `json:"runtime_user"`
	Extra       map[string]string `json:"extra_annotations,omitempty"`
	// GenerateLabels is the generate_labels script: its labels shape
	// only the config.
	GenerateLabels string        `json:"generate_labels,omitempty"`
	BaseConfig     digest.Digest `json:"base_config,omitempty"`
	// Author and History: the config's author and the version of the
	// history entries the executor writes (stacker's created_by texts).
	Author  string `json:"author"`
	History string `json:"history"`
}

// Key computes the cache keys of img. It reads every import (so it fails
// like Stage does on a missing import; http(s) imports come through
// opts.Resolve, downloaded by the executor) but writes nothing.
func Key(img *Image, opts KeyOptions) (Keys, error) {
	if img.From.Type == Scratch {
		if opts.BaseDigest != "" {
			return Keys{}, fmt.Errorf("key %s: a scratch image has no base digest, got %s", img.Name, opts.BaseDigest)
		}
	} else if err := opts.BaseDigest.Validate(); err != nil {
		return Keys{}, fmt.Errorf("key %s: base manifest digest %q: %w", img.Name, opts.BaseDigest, err)
	}
	if opts.LayerType == "" {
		return Keys{}, errors.New("key " + img.Name + ": no layer type")
	}
	platform := img.OS + "/" + img.Arch
	doc := layerKeyDoc{
		Version:         keyVersion,
		Name:            img.Name,
		Base:            keyBase{Type: img.From.Type, Digest: opts.BaseDigest},
		Platform:        platform,
		LayerType:       opts.LayerType,
		SourceDateEpoch: opts.SourceDateEpoch,
		Script:          img.Script(),
		Env:             mergeEnv(mergeEnv(nil, img.Environment), img.BuildEnv),
		Legacy:          img.LegacyImport,
		Imports:         []keyImport{},
	}
	slices.Sort(doc.Env)
	for _, b := range img.Binds {
		doc.Binds = append(doc.Binds, keyBind{Source: b.Source, Dest: b.Dest})
	}
	pls, err := img.placements(opts.Resolve)
	if err != nil {
		return Keys{}, err
	}
	for _, pl := range pls {
		ents, err := pl.entries()
		if err != nil {
			return Keys{}, img.importError(pl.imp, "%v", err)
		}
		doc.Imports = append(doc.Imports, keyImport{Target: pl.target, InImage: pl.inImage, UID: pl.imp.UID, GID: pl.imp.GID, Entries: ents})
	}
	layer, err := hashDoc(doc)
	if err != nil {
		return Keys{}, err
	}
	vols := slices.Clone(img.Volumes)
	slices.Sort(vols)
	vols = slices.Compact(vols)
	config, err := hashDoc(configKeyDoc{
		Version:        keyVersion,
		Layer:          layer,
		Platform:       platform,
		Entrypoint:     img.Entrypoint,
		Cmd:            img.Cmd,
		FullCommand:    img.FullCommand,
		Environment:    img.Environment,
		Labels:         img.Labels,
		Annotations:    img.Annotations,
		WorkingDir:     img.WorkingDir,
		Volumes:        vols,
		RuntimeUser:    img.RuntimeUser,
		Extra:          opts.Annotations,
		Author:         opts.Author,
		History:        historyVersion,
		GenerateLabels: img.LabelsScript(),
		BaseConfig:     opts.BaseConfig,
	})
	if err != nil {
		return Keys{}, err
	}
	return Keys{Layer: layer, Config: config}, nil
}

// hashDoc is sha256 over the JSON encoding: struct fields in declaration
// order, map keys sorted, so equal inputs give equal bytes on every run.
func hashDoc(v any) (digest.Digest, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("encode cache key: %w", err)
	}
	return digest.NewDigestFromEncoded(digest.SHA256, fmt.Sprintf("%x", sha256.Sum256(b))), nil
}
