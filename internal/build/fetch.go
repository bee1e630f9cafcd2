package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vesselos/vessel/internal/recipe"
)

// DownloadsDir (under the store root) caches http(s) imports: by-url/ holds
// the last copy of each URL with its ETag and Last-Modified, by-hash/ the
// files whose sha256 a recipe pinned with hash:.
const DownloadsDir = "build-downloads"

// MaxDownload bounds one http(s) import.
const MaxDownload = 8 << 30

// ErrHashRequired: Options.RequireHash and an http(s) import without hash:.
var ErrHashRequired = errors.New("http(s) import without hash:")

// downloadMeta is what the cache keeps next to a URL's last copy.
type downloadMeta struct {
	URL          string `json:"url"`
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
	SHA256       string `json:"sha256"`
	Size         int64  `json:"size"`
}

// fetcher downloads http(s) imports into the store's download cache:
//
//   - an import with hash: whose file is in by-hash/ needs no network at
//     all (the file is checked against the hash on every use);
//   - otherwise the URL's last copy is revalidated with If-None-Match /
//     If-Modified-Since: 304 reuses it, 200 replaces it;
//   - a server that sends neither ETag nor Last-Modified is downloaded
//     every time (the cache key still sees the content: an unchanged file
//     does not rebuild).
//
// Files are written to a temporary file and renamed into place, so a
// concurrent build sees the old copy or the new one, never half of one.
type fetcher struct {
	dir    string
	client *http.Client
	got    map[string]string // url (+ NUL + hash) -> host path, for this build
}

func newFetcher(root string, client *http.Client) *fetcher {
	if client == nil {
		client = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			ResponseHeaderTimeout: 60 * time.Second,
			TLSHandshakeTimeout:   30 * time.Second,
		}}
	}
	return &fetcher{dir: filepath.Join(root, DownloadsDir), client: client, got: map[string]string{}}
}

// fetch returns a host path holding imp's content.
func (f *fetcher) fetch(ctx context.Context, imp recipe.Import) (string, error) {
	url := imp.Source
	if p, ok := f.got[url+"\x00"+imp.Hash]; ok {
		return p, nil
	}
	for _, d := range []string{"by-url", "by-hash", "tmp"} {
		if err := os.MkdirAll(filepath.Join(f.dir, d), 0o755); err != nil {
			return "", err
		}
	}
	if imp.Hash != "" {
		p := filepath.Join(f.dir, "by-hash", imp.Hash)
		if sum, err := fileSHA256(p); err == nil && sum == imp.Hash {
			f.got[url+"\x00"+imp.Hash] = p
			return p, nil
		}
	}
	h := sha256.Sum256([]byte(url))
	base := filepath.Join(f.dir, "by-url", hex.EncodeToString(h[:]))
	var meta downloadMeta
	if b, err := os.ReadFile(base + ".json"); err == nil {
		if json.Unmarshal(b, &meta) != nil || meta.URL != url {
			meta = downloadMeta{}
		} else if sum, err := fileSHA256(base); err != nil || sum != meta.SHA256 {
			meta = downloadMeta{} // the copy is gone or damaged: download again
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	if meta.SHA256 != "" {
		if meta.ETag != "" {
			req.Header.Set("If-None-Match", meta.ETag)
		}
		if meta.LastModified != "" {
			req.Header.Set("If-Modified-Since", meta.LastModified)
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("download: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified && meta.SHA256 != "":
		// the cached copy is current
	case resp.StatusCode == http.StatusOK:
		if resp.ContentLength > MaxDownload {
			return "", fmt.Errorf("download: %d bytes is more than the %d an import may have", resp.ContentLength, int64(MaxDownload))
		}
		tmp, err := os.CreateTemp(filepath.Join(f.dir, "tmp"), "dl-*")
		if err != nil {
			return "", err
		}
		defer os.Remove(tmp.Name()) // after the rename: a no-op
		hw := sha256.New()
		n, err := io.Copy(io.MultiWriter(tmp, hw), io.LimitReader(resp.Body, MaxDownload+1))
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return "", fmt.Errorf("download: %w", err)
		}
		if n > MaxDownload {
			return "", fmt.Errorf("download: more than the %d bytes an import may have", int64(MaxDownload))
		}
		if resp.ContentLength >= 0 && n != resp.ContentLength {
			return "", fmt.Errorf("download: got %d bytes, the server announced %d", n, resp.ContentLength)
		}
		meta = downloadMeta{URL: url, ETag: resp.Header.Get("ETag"), LastModified: resp.Header.Get("Last-Modified"),
			SHA256: hex.EncodeToString(hw.Sum(nil)), Size: n}
		if err := os.Rename(tmp.Name(), base); err != nil {
			return "", err
		}
		b, _ := json.Marshal(meta)
		if err := writeFileAtomic(base+".json", b, filepath.Join(f.dir, "tmp")); err != nil {
			return "", err
		}
	default:
		return "", fmt.Errorf("download: the server answered %s", resp.Status)
	}
	if imp.Hash != "" {
		if meta.SHA256 != imp.Hash {
			return "", fmt.Errorf("download: %w", &recipe.HashMismatchError{Expected: imp.Hash, Actual: meta.SHA256})
		}
		p := filepath.Join(f.dir, "by-hash", imp.Hash)
		if err := copyFileAtomic(base, p, filepath.Join(f.dir, "tmp")); err != nil {
			return "", err
		}
		f.got[url+"\x00"+imp.Hash] = p
		return p, nil
	}
	// A private copy for this build: a concurrent build may replace the
	// URL's copy while this one stages it.
	p := filepath.Join(f.dir, "tmp", "use-"+hex.EncodeToString(h[:8])+"-"+meta.SHA256[:16])
	if err := copyFileAtomic(base, p, filepath.Join(f.dir, "tmp")); err != nil {
		return "", err
	}
	f.got[url+"\x00"] = p
	return p, nil
}

// path is where fetch put url's content in this build ("" if it did not).
func (f *fetcher) path(url string) string {
	for k, p := range f.got {
		if u, _, _ := strings.Cut(k, "\x00"); u == url {
			return p
		}
	}
	return ""
}

// close removes this build's private copies.
func (f *fetcher) close() error {
	var errs []error
	for k, p := range f.got {
		if filepath.Dir(p) == filepath.Join(f.dir, "tmp") {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		delete(f.got, k)
	}
	return errors.Join(errs...)
}

func writeFileAtomic(p string, b []byte, tmpDir string) error {
	t, err := os.CreateTemp(tmpDir, "w-*")
	if err != nil {
		return err
	}
	defer os.Remove(t.Name())
	_, err = t.Write(b)
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(t.Name(), p)
}

func copyFileAtomic(src, dst, tmpDir string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close() // read-only
	t, err := os.CreateTemp(tmpDir, "c-*")
	if err != nil {
		return err
	}
	defer os.Remove(t.Name())
	_, err = io.Copy(t, in)
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Chmod(t.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(t.Name(), dst)
}

// requireHashes refuses http(s) imports without hash: in every file of
// the build (Options.RequireHash), naming each one's file and line.
func requireHashes(files []*recipe.File) error {
	var errs []error
	for _, f := range files {
		for _, img := range f.Images {
			for _, imp := range img.Imports {
				if imp.Remote() && imp.Hash == "" {
					errs = append(errs, &recipe.Error{File: f.Path, Line: imp.Line, Image: img.Name, Key: "imports", Kind: ErrHashRequired,
						Msg: imp.Path + ": hashes are required (a reproducible build): an http(s) import needs hash: (its sha256)"})
				}
			}
			if img.From.Type == recipe.Tar && isHTTP(img.From.URL) && img.From.Hash == "" {
				errs = append(errs, &recipe.Error{File: f.Path, Line: img.From.Line, Image: img.Name, Key: "from", Kind: ErrHashRequired,
					Msg: img.From.URL + ": hashes are required (a reproducible build): an http(s) tar base needs hash: (its sha256)"})
			}
		}
	}
	return errors.Join(errs...)
}

func isHTTP(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}
