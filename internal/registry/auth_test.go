package registry

import (
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/registry/registrytest"
)

func writeAuthFile(t testing.TB, host, user, pass string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "auth.json")
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	if err := os.WriteFile(p, []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, auth)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// docker-registry with htpasswd: no credentials and wrong credentials are
// refused with errors that say what to do; the auth file's credentials work.
func TestBasicAuth(t *testing.T) {
	host := distribution(t, registrytest.Options{Auth: true})
	st := openStore(t)
	makeImage(t, st, "app:1", 4, 1000)
	ref := mustRef(t, "docker://"+host+"/acme/app:1")

	_, err := newClient(t, Options{AuthFile: "/nonexistent"}).Copy(ctx(t), Store(st, "app:1"), Registry(ref))
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "authentication required") || !strings.Contains(err.Error(), host+"/acme/app") {
		t.Fatalf("no credentials: %v", err)
	}
	_, err = newClient(t, Options{AuthFile: writeAuthFile(t, host, registrytest.User, "wrong")}).Copy(ctx(t), Store(st, "app:1"), Registry(ref))
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "rejected the credentials") {
		t.Fatalf("wrong password: %v", err)
	}
	c := newClient(t, Options{AuthFile: writeAuthFile(t, "http://"+host+"/", registrytest.User, registrytest.Password)})
	if _, err := c.Copy(ctx(t), Store(st, "app:1"), Registry(ref)); err != nil {
		t.Fatal(err)
	}
	creds := &Credentials{Username: registrytest.User, Password: registrytest.Password}
	if _, err := newClient(t, Options{Credentials: creds}).Copy(ctx(t), Registry(ref), Store(openStore(t), "app:1")); err != nil {
		t.Fatal(err)
	}
	// The same credentials from a docker credential helper (credsStore).
	bin := t.TempDir()
	helper := fmt.Sprintf("#!/bin/sh\nread -r server\n[ \"$server\" = %q ] || { echo credentials not found; exit 1; }\necho '{\"Username\":%q,\"Secret\":%q}'\n", host, registrytest.User, registrytest.Password)
	if err := os.WriteFile(filepath.Join(bin, "docker-credential-test"), []byte(helper), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	cfg := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(cfg, []byte(`{"auths":{},"credsStore":"test"}`), 0o600)
	if _, err := newClient(t, Options{AuthFile: cfg}).Copy(ctx(t), Registry(ref), Store(openStore(t), "app:1")); err != nil {
		t.Fatalf("credentials from docker-credential-test: %v", err)
	}
}

// Bearer tokens: the registry answers 401 with a realm; the client gets a
// token for the repository scope from the realm with the user's
// credentials, and a registry that says 403 is reported as denied.
func TestBearerTokenAndDenied(t *testing.T) {
	upstream := inProcess(t, true)
	var scopes []string
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != "alice" || p != "pw" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		scopes = append(scopes, r.URL.Query()["scope"]...)
		fmt.Fprintf(w, `{"token":"tok-%s"}`, r.URL.Query().Get("service"))
	}))
	t.Cleanup(tokens.Close)
	fwd := &proxy{upstream: upstream}
	denyPush := false
	host := startProxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok-reg" {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="reg",scope="repository:acme/app:pull"`, tokens.URL))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if denyPush && r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprint(w, `{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`)
			return
		}
		fwd.ServeHTTP(w, r)
	}))
	st := openStore(t)
	want := makeImage(t, st, "app:1", 5, 2000)
	ref := mustRef(t, "docker://"+host+"/acme/app:1")
	c := newClient(t, Options{Credentials: &Credentials{Username: "alice", Password: "pw"}})
	if _, err := c.Copy(ctx(t), Store(st, "app:1"), Registry(ref)); err != nil {
		t.Fatal(err)
	}
	res, err := c.Copy(ctx(t), Registry(ref), Store(openStore(t), "app:1"))
	if err != nil || res.Descriptor.Digest != want.Digest {
		t.Fatalf("pull with a token: %v", err)
	}
	if !contains(scopes, "repository:acme/app:pull,push") || !contains(scopes, "repository:acme/app:pull") {
		t.Fatalf("token scopes asked for: %q", scopes)
	}
	_, err = newClient(t, Options{Credentials: &Credentials{Username: "alice", Password: "nope"}}).Copy(ctx(t), Registry(ref), Store(openStore(t), "x:1"))
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("bad password at the token server: %v", err)
	}
	denyPush = true
	_, err = c.Copy(ctx(t), Store(st, "app:1"), Registry(mustRef(t, "docker://"+host+"/acme/app:2")))
	if !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "DENIED") || !strings.Contains(err.Error(), "acme/app") {
		t.Fatalf("denied push: %v", err)
	}
	_, err = c.Copy(ctx(t), Registry(mustRef(t, "docker://"+host+"/acme/missing:1")), Store(openStore(t), "x:1"))
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "acme/missing") {
		t.Fatalf("missing image: %v", err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TLS: a registry with a private CA works with --ca-file or --insecure and
// is refused without them.
func TestTLS(t *testing.T) {
	srv := httptest.NewTLSServer(&proxy{upstream: inProcess(t, false)})
	t.Cleanup(srv.Close)
	host := srv.Listener.Addr().String()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	st := openStore(t)
	makeImage(t, st, "app:1", 6, 100)
	ref := mustRef(t, "docker://"+host+"/acme/app:1")
	mk := func(o Options) *Client {
		c, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if _, err := mk(Options{Retries: NoRetries}).Copy(ctx(t), Store(st, "app:1"), Registry(ref)); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted certificate: %v", err)
	}
	if _, err := mk(Options{CAFile: ca}).Copy(ctx(t), Store(st, "app:1"), Registry(ref)); err != nil {
		t.Fatal(err)
	}
	if _, err := mk(Options{Insecure: true}).Copy(ctx(t), Registry(ref), Store(openStore(t), "app:1")); err != nil {
		t.Fatal(err)
	}
}

func TestLookupCredentials(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "auth.json")
	os.WriteFile(f, []byte(`{"auths":{
		"reg.example.com":{"auth":"`+base64.StdEncoding.EncodeToString([]byte("a:1"))+`"},
		"reg.example.com/team":{"auth":"`+base64.StdEncoding.EncodeToString([]byte("b:2"))+`"},
		"https://index.docker.io/v1/":{"auth":"`+base64.StdEncoding.EncodeToString([]byte("c:3"))+`"}}}`), 0o600)
	for _, tc := range []struct{ host, repo, user string }{
		{"reg.example.com", "other/app", "a"},
		{"reg.example.com", "team/app", "b"},
		{"docker.io", "library/busybox", "c"},
		{"elsewhere.example.com", "x", ""},
	} {
		c, err := LookupCredentials([]string{filepath.Join(dir, "missing.json"), f}, tc.host, tc.repo)
		if err != nil || c.Username != tc.user {
			t.Errorf("%s/%s: %+v %v, want user %q", tc.host, tc.repo, c, err, tc.user)
		}
	}
	os.WriteFile(f, []byte(`{"auths":`), 0o600)
	if _, err := LookupCredentials([]string{f}, "reg.example.com", "x"); err == nil {
		t.Error("a malformed auth file was accepted")
	}
}

func TestParseReference(t *testing.T) {
	for in, want := range map[string]string{
		"docker://127.0.0.1:5000/acme/app:1": "docker://127.0.0.1:5000/acme/app:1",
		"docker://localhost/app":             "docker://localhost/app:latest",
		"docker://busybox":                   "docker://docker.io/library/busybox:latest",
		"docker://reg.example.com/a/b@sha256:" + strings.Repeat("a", 64): "docker://reg.example.com/a/b@sha256:" + strings.Repeat("a", 64),
	} {
		r, err := ParseReference(in)
		if err != nil || r.String() != want {
			t.Errorf("%s: %s %v, want %s", in, r, err, want)
		}
	}
	for _, bad := range []string{"docker://", "docker://reg.example.com/UPPER", "docker://reg.example.com/a:b:c", "docker://reg.example.com/a@sha256:12", "docker://reg.example.com/a:" + strings.Repeat("x", 200)} {
		if _, err := ParseReference(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
	for _, bad := range []string{"ftp://x/y", "oci:", "name with space", "docker-daemon:x:1", "stacker://x/y", "UPPER:1", "../../etc:1", "docker-archive:/tmp/x.tar", "oci-archive:x.tar:v1"} {
		if _, err := ParseLocation(bad, nil); err == nil {
			t.Errorf("location %q accepted", bad)
		}
	}
}

// fakeHelpers puts docker-credential-fake (knows reg.example and
// tok.example) and docker-credential-broken on PATH.
func fakeHelpers(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	fake := `#!/bin/sh
[ "$1" = get ] || exit 3
read -r server
case $server in
reg.example) echo '{"ServerURL":"reg.example","Username":"alice","Secret":"s3cret"}' ;;
tok.example) echo '{"ServerURL":"tok.example","Username":"<token>","Secret":"refresh-me"}' ;;
https://index.docker.io/v1/) echo '{"Username":"hub","Secret":"hubpw"}' ;;
*) echo "credentials not found in native keychain"; exit 1 ;;
esac
`
	broken := "#!/bin/sh\necho boom >&2\nexit 2\n"
	for name, script := range map[string]string{"docker-credential-fake": fake, "docker-credential-broken": broken} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
}

func TestCredentialHelpers(t *testing.T) {
	fakeHelpers(t)
	file := func(content string) []string {
		p := filepath.Join(t.TempDir(), "config.json")
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return []string{p}
	}
	for _, tc := range []struct {
		name, config, host string
		want               Credentials
		err                string
	}{
		{"per-registry helper", `{"credHelpers":{"reg.example":"fake"}}`, "reg.example", Credentials{Username: "alice", Password: "s3cret"}, ""},
		{"store", `{"auths":{"reg.example":{}},"credsStore":"fake"}`, "reg.example", Credentials{Username: "alice", Password: "s3cret"}, ""},
		{"store, identity token", `{"credsStore":"fake"}`, "tok.example", Credentials{IdentityToken: "refresh-me"}, ""},
		{"store, docker hub URL", `{"credsStore":"fake"}`, "docker.io", Credentials{Username: "hub", Password: "hubpw"}, ""},
		{"store knows nothing", `{"credsStore":"fake"}`, "other.example", Credentials{}, ""},
		{"inline beats store", `{"auths":{"reg.example":{"auth":"Ym9iOnB3"}},"credsStore":"fake"}`, "reg.example", Credentials{Username: "bob", Password: "pw"}, ""},
		{"helper beats inline", `{"auths":{"reg.example":{"auth":"Ym9iOnB3"}},"credHelpers":{"reg.example":"fake"}}`, "reg.example", Credentials{Username: "alice", Password: "s3cret"}, ""},
		{"missing helper", `{"credHelpers":{"reg.example":"nosuch"}}`, "reg.example", Credentials{}, "docker-credential-nosuch is not installed"},
		{"failing helper", `{"credsStore":"broken"}`, "reg.example", Credentials{}, "boom"},
	} {
		got, err := LookupCredentials(file(tc.config), tc.host, "repo")
		if tc.err != "" {
			if !errors.Is(err, ErrCredentialHelper) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want ErrCredentialHelper mentioning %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: got %+v, %v; want %+v", tc.name, got, err, tc.want)
		}
	}
}
