package registry

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vesselos/vessel/internal/bounded"
)

// Credentials for one registry.
type Credentials struct {
	Username, Password string
	// IdentityToken is an OAuth2 refresh token (from `docker login` to some
	// registries); used as the refresh_token for bearer token requests.
	IdentityToken string
}

func (c Credentials) empty() bool {
	return c.Username == "" && c.Password == "" && c.IdentityToken == ""
}

// AuthFiles returns the credential files looked at, in order:
// $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
// $DOCKER_CONFIG/config.json or ~/.docker/config.json.
func AuthFiles() []string {
	var files []string
	if f := os.Getenv("REGISTRY_AUTH_FILE"); f != "" {
		files = append(files, f)
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		files = append(files, filepath.Join(d, "containers", "auth.json"))
	}
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		files = append(files, filepath.Join(d, "config.json"))
	} else if home, err := os.UserHomeDir(); err == nil {
		files = append(files, filepath.Join(home, ".docker", "config.json"))
	}
	return files
}

type authFile struct {
	Auths map[string]struct {
		Auth          string `json:"auth"`
		Username      string `json:"username"`
		Password      string `json:"password"`
		IdentityToken string `json:"identitytoken"`
	} `json:"auths"`
	// Credential helpers (docker-credential-NAME): per registry, and a
	// default store used for every registry without inline credentials.
	CredHelpers map[string]string `json:"credHelpers"`
	CredsStore  string            `json:"credsStore"`
}

// ErrCredentialHelper wraps failures of a docker-credential-* helper.
var ErrCredentialHelper = errors.New("credential helper failed")

// helperCredentials asks docker-credential-NAME for host's credentials,
// as docker does: "get" with the server URL on stdin, JSON on stdout. A
// helper that knows nothing about host answers "credentials not found":
// that is no credentials, not an error.
func helperCredentials(name, host string) (Credentials, error) {
	server := host
	if host == "docker.io" {
		server = "https://index.docker.io/v1/"
	}
	bin := "docker-credential-" + name
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "get")
	cmd.Stdin = strings.NewReader(server)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stdout.String() + " " + stderr.String())
		if strings.Contains(strings.ToLower(msg), "credentials not found") {
			return Credentials{}, nil
		}
		if errors.Is(err, exec.ErrNotFound) {
			return Credentials{}, fmt.Errorf("%w: %s is not installed (named in the auth file for %s)", ErrCredentialHelper, bin, host)
		}
		return Credentials{}, fmt.Errorf("%w: %s get %s: %v: %s", ErrCredentialHelper, bin, server, err, msg)
	}
	var out struct{ Username, Secret string }
	if err := json.Unmarshal([]byte(stdout.String()), &out); err != nil {
		return Credentials{}, fmt.Errorf("%w: %s answered something that is not JSON: %v", ErrCredentialHelper, bin, err)
	}
	if out.Username == "<token>" {
		return Credentials{IdentityToken: out.Secret}, nil
	}
	return Credentials{Username: out.Username, Password: out.Secret}, nil
}

// LookupCredentials finds credentials for host (and, for repository-scoped
// entries as podman writes them, HOST/REPO) in the given files; the first
// file with a matching entry wins, and within a file the longest matching
// key. A file's credHelpers entry for host, or its credsStore for a
// registry without inline credentials, runs docker-credential-NAME.
// Missing files are skipped; a malformed one is an error.
func LookupCredentials(files []string, host, repo string) (Credentials, error) {
	for _, f := range files {
		b, err := bounded.ReadFile(f, 4<<20)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return Credentials{}, fmt.Errorf("auth file %s: %w", f, err)
		}
		var af authFile
		if err := json.Unmarshal(b, &af); err != nil {
			return Credentials{}, fmt.Errorf("auth file %s: %w", f, err)
		}
		for key, helper := range af.CredHelpers {
			if normalizeAuthKey(key) == host && helper != "" {
				return helperCredentials(helper, host)
			}
		}
		best, bestLen := "", -1
		for key := range af.Auths {
			k := normalizeAuthKey(key)
			if (k == host || strings.HasPrefix(host+"/"+repo+"/", k+"/")) && len(k) > bestLen {
				best, bestLen = key, len(k)
			}
		}
		if bestLen < 0 && af.CredsStore == "" {
			continue
		}
		e := af.Auths[best]
		c := Credentials{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken}
		if e.Auth == "" && c.empty() && af.CredsStore != "" {
			// With a store, "auths" only lists registries (docker writes {}).
			c, err := helperCredentials(af.CredsStore, host)
			if err != nil || !c.empty() {
				return c, err
			}
			continue
		}
		if e.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return Credentials{}, fmt.Errorf("auth file %s: entry %q: auth is not base64: %w", f, best, err)
			}
			u, p, ok := strings.Cut(string(raw), ":")
			if !ok {
				return Credentials{}, fmt.Errorf("auth file %s: entry %q: auth is not USER:PASSWORD", f, best)
			}
			c.Username, c.Password = u, p
		}
		return c, nil
	}
	return Credentials{}, nil
}

// normalizeAuthKey turns "https://index.docker.io/v1/" or "host/" into a bare
// "host[/path]".
func normalizeAuthKey(k string) string {
	k = strings.TrimPrefix(strings.TrimPrefix(k, "https://"), "http://")
	k = strings.TrimSuffix(strings.TrimSuffix(k, "/"), "/v1")
	k = strings.TrimSuffix(k, "/v2")
	if k == "index.docker.io" || k == "registry-1.docker.io" {
		k = "docker.io"
	}
	return k
}

// challenge is a parsed WWW-Authenticate header.
type challenge struct {
	scheme string // "basic" or "bearer"
	params map[string]string
}

func parseChallenge(h string) (challenge, bool) {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(h), " ")
	c := challenge{scheme: strings.ToLower(scheme), params: map[string]string{}}
	if c.scheme != "basic" && c.scheme != "bearer" {
		return c, false
	}
	for rest = strings.TrimSpace(rest); rest != ""; {
		k, v, ok := strings.Cut(rest, "=")
		if !ok {
			break
		}
		k = strings.ToLower(strings.TrimSpace(k))
		v = strings.TrimSpace(v)
		if strings.HasPrefix(v, `"`) {
			end := strings.Index(v[1:], `"`)
			if end < 0 {
				break
			}
			c.params[k] = v[1 : end+1]
			rest = strings.TrimPrefix(strings.TrimSpace(v[end+2:]), ",")
		} else {
			val, r, _ := strings.Cut(v, ",")
			c.params[k] = strings.TrimSpace(val)
			rest = r
		}
		rest = strings.TrimSpace(rest)
	}
	return c, true
}

// hostAuth is what the client learned about one registry host: its
// challenge and the tokens it handed out, per scope.
type hostAuth struct {
	mu     sync.Mutex
	creds  Credentials
	loaded bool
	chal   *challenge
	tokens map[string]string // scope key -> bearer token
}

// authorize sets the Authorization header for scopes, if the host's
// challenge is known (no round trip for hosts that never asked).
func (c *Client) authorize(req *http.Request, host string, scopes []string) {
	ha := c.hostAuth(host)
	ha.mu.Lock()
	defer ha.mu.Unlock()
	if ha.chal == nil {
		return
	}
	switch ha.chal.scheme {
	case "basic":
		if !ha.creds.empty() {
			req.SetBasicAuth(ha.creds.Username, ha.creds.Password)
		}
	case "bearer":
		if t := ha.tokens[strings.Join(scopes, " ")]; t != "" {
			req.Header.Set("Authorization", "Bearer "+t)
		}
	}
}

func (c *Client) hostAuth(host string) *hostAuth {
	c.mu.Lock()
	defer c.mu.Unlock()
	ha := c.auth[host]
	if ha == nil {
		ha = &hostAuth{tokens: map[string]string{}}
		c.auth[host] = ha
	}
	return ha
}

// credentials loads the credentials for host/repo once: --creds first, then
// the auth files.
func (c *Client) credentials(ha *hostAuth, host, repo string) (Credentials, error) {
	if ha.loaded {
		return ha.creds, nil
	}
	var err error
	if c.opts.Credentials != nil {
		ha.creds = *c.opts.Credentials
	} else {
		files := AuthFiles()
		if c.opts.AuthFile != "" {
			files = []string{c.opts.AuthFile}
		}
		ha.creds, err = LookupCredentials(files, host, repo)
	}
	ha.loaded = err == nil
	return ha.creds, err
}

// answerChallenge handles a 401 to a request that carried credentials or not
// (sentAuth): it records the challenge and, for bearer, fetches a token for
// scopes. It reports whether a retry can succeed.
func (c *Client) answerChallenge(ctx context.Context, resp *http.Response, host, repo string, scopes []string, sentAuth bool) (bool, error) {
	ch, ok := parseChallenge(resp.Header.Get("WWW-Authenticate"))
	if !ok {
		return false, nil
	}
	ha := c.hostAuth(host)
	ha.mu.Lock()
	defer ha.mu.Unlock()
	creds, err := c.credentials(ha, host, repo)
	if err != nil {
		return false, err
	}
	ha.chal = &ch
	switch ch.scheme {
	case "basic":
		// retry with credentials, if we have them and did not send them yet
		return !creds.empty() && !sentAuth, nil
	case "bearer":
		key := strings.Join(scopes, " ")
		tok, err := c.fetchToken(ctx, ch, creds, scopes)
		if err != nil {
			return false, err
		}
		ha.tokens[key] = tok
		return true, nil
	}
	return false, nil
}

// fetchToken asks the challenge's realm for a bearer token.
func (c *Client) fetchToken(ctx context.Context, ch challenge, creds Credentials, scopes []string) (string, error) {
	realm := ch.params["realm"]
	u, err := url.Parse(realm)
	if err != nil || realm == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return "", fmt.Errorf("registry token realm %q is not a URL", realm)
	}
	q := u.Query()
	if s := ch.params["service"]; s != "" {
		q.Set("service", s)
	}
	for _, s := range scopes {
		q.Add("scope", s)
	}
	u.RawQuery = q.Encode()
	tctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(tctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", err
	}
	if creds.Username != "" || creds.Password != "" {
		req.SetBasicAuth(creds.Username, creds.Password)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("get registry token from %s: %w", u.Host, err)
	}
	resp.Body = newStallReader(resp.Body, c.opts.ReadTimeout, cancel)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e := responseError("get token for", u.Host, resp, !creds.empty(), u.Host)
		return "", e
	}
	var t struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&t); err != nil {
		return "", fmt.Errorf("registry token from %s: %w", u.Host, err)
	}
	if t.Token == "" {
		t.Token = t.AccessToken
	}
	if t.Token == "" {
		return "", fmt.Errorf("registry token from %s: empty token", u.Host)
	}
	return t.Token, nil
}
