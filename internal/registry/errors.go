package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Sentinels that Error values match with errors.Is.
var (
	// ErrUnauthorized: the registry wants credentials, or rejected them (401).
	ErrUnauthorized = errors.New("unauthorized")
	// ErrDenied: the credentials are valid but lack permission (403).
	ErrDenied = errors.New("denied")
	// ErrNotFound: the repository, manifest or blob does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrCorrupt: content from the registry does not match its digest or size.
	ErrCorrupt = errors.New("content does not match its digest")
	// ErrTooLarge: a descriptor is larger than Options.MaxBlobSize.
	ErrTooLarge = errors.New("larger than the size limit")
	// ErrImageNotLocal: PushSigned needs an image the store does not hold.
	ErrImageNotLocal = errors.New("not in the local store")
	// ErrOtherArch: Install was given a system manifest whose images are
	// for another architecture than the machine's.
	ErrOtherArch = errors.New("this system manifest is for another architecture")
)

// Error is a failed registry request. It names what was being done, the
// repository, the HTTP status and the registry's own error codes, and says
// what to do next.
type Error struct {
	Op     string // "pull manifest", "push blob sha256:...", ...
	Repo   string // HOST/REPO
	Status int
	Codes  []string // registry error codes, e.g. MANIFEST_UNKNOWN
	Detail string   // the registry's messages
	Hint   string   // what the user can do
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %d %s", e.Op, e.Repo, e.Status, strings.ToLower(http.StatusText(e.Status)))
	if len(e.Codes) > 0 {
		fmt.Fprintf(&b, " (%s", strings.Join(e.Codes, ", "))
		if e.Detail != "" {
			fmt.Fprintf(&b, ": %s", e.Detail)
		}
		b.WriteString(")")
	} else if e.Detail != "" {
		fmt.Fprintf(&b, " (%s)", e.Detail)
	}
	if e.Hint != "" {
		b.WriteString(": " + e.Hint)
	}
	return b.String()
}

// Unwrap maps the status to ErrUnauthorized, ErrDenied or ErrNotFound.
func (e *Error) Unwrap() error {
	switch e.Status {
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusForbidden:
		return ErrDenied
	case http.StatusNotFound:
		return ErrNotFound
	}
	return nil
}

// responseError reads a registry error response (and closes its body).
func responseError(op, repo string, resp *http.Response, hadCreds bool, host string) *Error {
	defer resp.Body.Close()
	e := &Error{Op: op, Repo: repo, Status: resp.StatusCode}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var env struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if json.Unmarshal(body, &env) == nil && len(env.Errors) > 0 {
		var msgs []string
		for _, x := range env.Errors {
			e.Codes = append(e.Codes, x.Code)
			if x.Message != "" {
				msgs = append(msgs, x.Message)
			}
		}
		e.Detail = strings.Join(msgs, "; ")
	} else if s := strings.TrimSpace(string(body)); s != "" && len(s) < 200 && !strings.HasPrefix(s, "<") {
		e.Detail = s
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		if hadCreds {
			e.Hint = fmt.Sprintf("the registry rejected the credentials for %s: check the user and password in your auth file or --creds", host)
		} else {
			e.Hint = fmt.Sprintf("authentication required: add credentials for %s to $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json or ~/.docker/config.json (or pass --creds USER:PASSWORD)", host)
		}
	case http.StatusForbidden:
		e.Hint = fmt.Sprintf("access denied: the account has no permission for this on %s; ask the registry's administrator", repo)
	case http.StatusNotFound:
		e.Hint = "check the repository name, tag or digest"
	}
	return e
}
