package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/vesselos/vessel/internal/bounded"
)

var timeAfter = time.After

// Media types of manifests that are copied (exactly, never converted).
const (
	DockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	DockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// maxManifestSize bounds manifests and indexes read into memory.
const maxManifestSize = 4 << 20

var manifestAccept = []string{ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex, DockerManifest, DockerManifestList}

// getManifest fetches the manifest ref names and returns its exact bytes
// and descriptor. A pinned digest must match the bytes; so must the
// registry's Docker-Content-Digest header when it sends one.
func (c *Client) getManifest(ctx context.Context, ref Reference) (ocispec.Descriptor, []byte, error) {
	resp, err := c.send(ctx, &request{op: "pull manifest", ref: ref, method: http.MethodGet,
		path: ref.Repo + "/manifests/" + ref.Ref(), scopes: []string{pullScope(ref.Repo)},
		header: http.Header{"Accept": manifestAccept}, expect: []int{http.StatusOK}})
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.Status == http.StatusNotFound {
			e.Hint = fmt.Sprintf("%s has no manifest %s; check the name and tag", ref.Name(), ref.Ref())
		}
		return ocispec.Descriptor{}, nil, err
	}
	defer resp.Body.Close()
	b, err := bounded.ReadAll(resp.Body, maxManifestSize, "manifest "+ref.String())
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("pull manifest %s: %w", ref, err)
	}
	got := digest.FromBytes(b)
	if ref.Digest != "" && ref.Digest != got {
		return ocispec.Descriptor{}, nil, fmt.Errorf("pull manifest %s: %w: the registry sent content with digest %s", ref, ErrCorrupt, got)
	}
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
		if hd, err := digest.Parse(h); err == nil && hd.Algorithm() == digest.SHA256 && hd != got {
			return ocispec.Descriptor{}, nil, fmt.Errorf("pull manifest %s: %w: header says %s, content has %s", ref, ErrCorrupt, hd, got)
		}
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if inner := mediaTypeOf(b); inner != "" {
		mt = inner
	}
	return ocispec.Descriptor{MediaType: mt, Digest: got, Size: int64(len(b))}, b, nil
}

// mediaTypeOf reads the mediaType field of a manifest or index.
func mediaTypeOf(b []byte) string {
	var v struct {
		MediaType string `json:"mediaType"`
	}
	json.Unmarshal(b, &v)
	return v.MediaType
}

// putManifest uploads manifest bytes under ref's tag or digest. It reports
// whether the registry processed the subject (the OCI-Subject header of
// registries with the referrers API).
func (c *Client) putManifest(ctx context.Context, ref Reference, mediaType string, b []byte) (bool, error) {
	resp, err := c.send(ctx, &request{op: "push manifest to", ref: ref, method: http.MethodPut,
		path: ref.Repo + "/manifests/" + ref.Ref(), header: http.Header{"Content-Type": {mediaType}},
		body: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, size: int64(len(b)),
		scopes: []string{pushScope(ref.Repo)}, expect: []int{http.StatusCreated, http.StatusOK, http.StatusAccepted}})
	if err != nil {
		return false, err
	}
	drain(resp)
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" && h != digest.FromBytes(b).String() {
		return false, fmt.Errorf("push manifest %s: registry stored it as %s, not %s (it re-encoded the manifest)", ref, h, digest.FromBytes(b))
	}
	return resp.Header.Get("OCI-Subject") != "", nil
}

// FallbackTag is the tag that holds the referrers of subject on registries
// without the referrers API (OCI distribution spec 1.1 tag schema).
func FallbackTag(subject digest.Digest) string {
	return subject.Algorithm().String() + "-" + subject.Encoded()
}

// Referrers lists the manifests in ref's repository whose subject is
// subject, optionally only those of artifactType. It uses the OCI 1.1
// referrers API and falls back to the tag schema (an index tagged
// sha256-<hex>) when the registry answers 404.
func (c *Client) Referrers(ctx context.Context, ref Reference, subject digest.Digest, artifactType string) ([]ocispec.Descriptor, error) {
	q := url.Values{}
	if artifactType != "" {
		q.Set("artifactType", artifactType)
	}
	resp, err := c.send(ctx, &request{op: "list referrers of " + subject.String() + " in", ref: ref, method: http.MethodGet,
		path: ref.Repo + "/referrers/" + subject.String(), query: q, scopes: []string{pullScope(ref.Repo)},
		header: http.Header{"Accept": {ocispec.MediaTypeImageIndex}}, expect: []int{http.StatusOK, http.StatusNotFound}})
	if err != nil {
		return nil, err
	}
	var idx ocispec.Index
	if resp.StatusCode == http.StatusOK && isIndexType(resp.Header.Get("Content-Type")) {
		defer resp.Body.Close()
		b, err := bounded.ReadAll(resp.Body, maxManifestSize, "referrers index of "+subject.String())
		if err != nil {
			return nil, fmt.Errorf("referrers of %s in %s: %w", subject, ref.Name(), err)
		}
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, fmt.Errorf("referrers of %s in %s: %w", subject, ref.Name(), err)
		}
	} else {
		drain(resp)
		_, b, err := c.getManifest(ctx, Reference{Host: ref.Host, Repo: ref.Repo, Tag: FallbackTag(subject)})
		if errors.Is(err, ErrNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, fmt.Errorf("referrers of %s in %s: tag %s: %w", subject, ref.Name(), FallbackTag(subject), err)
		}
	}
	var out []ocispec.Descriptor
	for _, d := range idx.Manifests {
		// Registries written before OCI 1.1 was final report the config media
		// type as the artifact type: keep those as candidates too; callers
		// read the manifest and check its own artifactType.
		if artifactType == "" || d.ArtifactType == artifactType || d.ArtifactType == "" || d.ArtifactType == ocispec.MediaTypeEmptyJSON {
			out = append(out, d)
		}
	}
	return out, nil
}

func isIndexType(ct string) bool {
	mt, _, _ := mime.ParseMediaType(ct)
	return mt == ocispec.MediaTypeImageIndex || mt == "application/json" || mt == ""
}

// addFallbackReferrer records desc in the sha256-<hex> index of subject,
// for registries that did not process the subject themselves.
func (c *Client) addFallbackReferrer(ctx context.Context, ref Reference, subject digest.Digest, desc ocispec.Descriptor) error {
	tagRef := Reference{Host: ref.Host, Repo: ref.Repo, Tag: FallbackTag(subject)}
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}}
	_, b, err := c.getManifest(ctx, tagRef)
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil:
		return err
	default:
		if err := json.Unmarshal(b, &idx); err != nil {
			return fmt.Errorf("referrers tag %s in %s: %w", tagRef.Tag, ref.Name(), err)
		}
		for _, d := range idx.Manifests {
			if d.Digest == desc.Digest {
				return nil
			}
		}
	}
	idx.Manifests = append(idx.Manifests, desc)
	nb, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	_, err = c.putManifest(ctx, tagRef, ocispec.MediaTypeImageIndex, nb)
	return err
}
