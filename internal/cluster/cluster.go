// Package cluster admits machines into a cluster on proof of what they run.
//
// A Server listens for mutual TLS: a machine's client certificate is its
// identity certificate and its TLS key is the TPM-resident identity key, so
// only the machine that holds the key can connect as that machine. Over
// that connection the machine asks for a nonce, quotes its TPM with it
// (internal/attest) and posts the quote; the server verifies it against its
// attest.Policy (machine CA, product, allowed manifests, UKI signers),
// checks that the quote's identity is the TLS peer's and that neither is
// revoked, and returns a short-lived cluster certificate for the identity
// key, signed by the cluster CA. Every join is a fresh attestation; nonces
// are single-use and expire.
//
// Join is the machine's side.
package cluster

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vesselos/vessel/internal/attest"
	"github.com/vesselos/vessel/internal/trust"
)

// Defaults.
const (
	DefaultValidity = time.Hour
	NonceTTL        = 2 * time.Minute
	maxPending      = 4096
	maxBody         = 16 << 20
)

// Paths of the HTTP API.
const (
	PathNonce = "/v1/nonce"
	PathJoin  = "/v1/join"
	PathCRL   = "/v1/crl"
)

// ErrRevoked: the machine's identity certificate is on the revocation list.
var ErrRevoked = errors.New("identity certificate revoked")

// Server admits machines. Create it with NewServer.
type Server struct {
	Policy attest.Policy
	// CA and CAKey sign cluster certificates (and the server's own TLS
	// certificate).
	CA    *x509.Certificate
	CAKey crypto.Signer
	// Validity of a cluster certificate (DefaultValidity when zero).
	Validity time.Duration
	// RevokedFile lists revoked serials (identity or cluster
	// certificates, one per line, 0x-hex or decimal; # comments). It is
	// read on every join, so revoking needs no restart.
	RevokedFile string
	// Log receives one line per join (nil: none).
	Log io.Writer

	mu      sync.Mutex
	pending map[string]pendingNonce // by hex nonce
}

type pendingNonce struct {
	peer    [32]byte // sha256 of the TLS peer's certificate
	expires time.Time
}

// Credential is what a machine gets on joining.
type Credential struct {
	// Certificate is the cluster certificate (PEM) for the identity key.
	Certificate string `json:"certificate"`
	// CA is the cluster CA certificate (PEM).
	CA       string    `json:"ca"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"notAfter"`
	// Report is the server's verification of the machine's quote.
	Report *attest.Report `json:"report"`
}

// refusal is the JSON body of a refused join.
type refusal struct {
	Error  string         `json:"error"`
	Report *attest.Report `json:"report,omitempty"`
}

// TLSConfig returns the server's TLS configuration: a certificate for
// hosts signed by the cluster CA, client certificates required and
// verified against the policy's machine CAs.
func (s *Server) TLSConfig(hosts []string) (*tls.Config, error) {
	if len(s.Policy.MachineCAs) == 0 {
		return nil, errors.New("cluster server: no machine CA")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "vessel cluster server"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := s.issue(tmpl, &key.PublicKey, 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("cluster server certificate: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range s.Policy.MachineCAs {
		pool.AddCert(c)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der, s.CA.Raw}, PrivateKey: key}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}, nil
}

// issue signs tmpl for pub with the cluster CA.
func (s *Server) issue(tmpl *x509.Certificate, pub crypto.PublicKey, validFor time.Duration) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-time.Minute)
	tmpl.NotAfter = now.Add(validFor)
	if tmpl.NotAfter.After(s.CA.NotAfter) {
		tmpl.NotAfter = s.CA.NotAfter
	}
	return x509.CreateCertificate(rand.Reader, tmpl, s.CA, pub, s.CAKey)
}

// Handler serves the join API; it must be behind TLS from TLSConfig.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathNonce, s.nonce)
	mux.HandleFunc("POST "+PathJoin, s.join)
	mux.HandleFunc("GET "+PathCRL, s.crl)
	return mux
}

func peer(r *http.Request) (*x509.Certificate, bool) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || len(r.TLS.VerifiedChains) == 0 {
		return nil, false
	}
	return r.TLS.PeerCertificates[0], true
}

func (s *Server) nonce(w http.ResponseWriter, r *http.Request) {
	c, ok := peer(r)
	if !ok {
		http.Error(w, "client certificate required", http.StatusUnauthorized)
		return
	}
	n := make([]byte, 32)
	if _, err := rand.Read(n); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	now := time.Now()
	s.mu.Lock()
	if s.pending == nil {
		s.pending = map[string]pendingNonce{}
	}
	for k, p := range s.pending {
		if now.After(p.expires) {
			delete(s.pending, k)
		}
	}
	if len(s.pending) >= maxPending {
		s.mu.Unlock()
		http.Error(w, "too many joins in progress", http.StatusServiceUnavailable)
		return
	}
	s.pending[hex.EncodeToString(n)] = pendingNonce{peer: sha256.Sum256(c.Raw), expires: now.Add(NonceTTL)}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]string{"nonce": hex.EncodeToString(n)})
}

// take removes nonce from the pending set if it was issued to peer and has
// not expired.
func (s *Server) take(nonce string, peer *x509.Certificate) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pending[nonce]
	if !ok {
		return errors.New("unknown or already used nonce: ask for a new one")
	}
	delete(s.pending, nonce)
	if p.peer != sha256.Sum256(peer.Raw) {
		return errors.New("the nonce was issued to another machine")
	}
	if time.Now().After(p.expires) {
		return errors.New("the nonce expired")
	}
	return nil
}

func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	c, ok := peer(r)
	if !ok {
		http.Error(w, "client certificate required", http.StatusUnauthorized)
		return
	}
	cred, status, err := s.admit(r, c)
	if err != nil {
		s.logf("refused %s (serial %s): %v", c.Subject.CommonName, trust.FormatSerial(c.SerialNumber), err)
		var rep *attest.Report
		var ae *admitError
		if errors.As(err, &ae) {
			rep = ae.report
		}
		writeJSON(w, status, refusal{Error: err.Error(), Report: rep})
		return
	}
	s.logf("admitted %s (product %s, manifest %s version %d): cluster certificate %s until %s",
		cred.Report.MachineID, cred.Report.ProductID, cred.Report.Manifest.Digest, cred.Report.Manifest.Version,
		cred.Serial, cred.NotAfter.UTC().Format(time.RFC3339))
	writeJSON(w, http.StatusOK, cred)
}

type admitError struct {
	err    error
	report *attest.Report
}

func (e *admitError) Error() string { return e.err.Error() }
func (e *admitError) Unwrap() error { return e.err }

func (s *Server) admit(r *http.Request, c *x509.Certificate) (*Credential, int, error) {
	if err := s.checkRevoked(c.SerialNumber); err != nil {
		return nil, http.StatusForbidden, err
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		return nil, http.StatusBadRequest, fmt.Errorf("read quote: %v", err)
	}
	q, err := attest.ParseQuote(body)
	if err != nil {
		return nil, http.StatusBadRequest, err
	}
	if err := s.take(hex.EncodeToString(q.Nonce), c); err != nil {
		return nil, http.StatusForbidden, err
	}
	rep, err := attest.Verify(q, q.Nonce, s.Policy)
	if err != nil {
		return nil, http.StatusForbidden, &admitError{err: err, report: rep}
	}
	if !rep.Identity.Equal(c) {
		return nil, http.StatusForbidden, &admitError{report: rep,
			err: fmt.Errorf("the quote is for machine %s (serial %s), the TLS peer is %s (serial %s)", rep.MachineID, rep.IdentitySerial, c.Subject.CommonName, trust.FormatSerial(c.SerialNumber))}
	}
	validity := s.Validity
	if validity <= 0 {
		validity = DefaultValidity
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{Organization: s.CA.Subject.Organization, CommonName: rep.MachineID},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		URIs:        c.URIs,
	}
	der, err := s.issue(tmpl, c.PublicKey, validity)
	if err != nil {
		return nil, http.StatusInternalServerError, fmt.Errorf("issue cluster certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, http.StatusInternalServerError, err
	}
	return &Credential{Certificate: string(trust.PEMCerts(cert)), CA: string(trust.PEMCerts(s.CA)),
		Serial: trust.FormatSerial(cert.SerialNumber), NotAfter: cert.NotAfter, Report: rep}, http.StatusOK, nil
}

// CRL returns the revocation file's serials as a DER CRL signed by the
// cluster CA, valid for the certificate validity: cluster peers that
// check it refuse a revoked machine's last credential before it expires.
func (s *Server) CRL() ([]byte, error) {
	revoked, err := ReadRevoked(s.RevokedFile)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	validity := s.Validity
	if validity <= 0 {
		validity = DefaultValidity
	}
	l := &x509.RevocationList{Number: big.NewInt(now.UnixNano()), ThisUpdate: now, NextUpdate: now.Add(validity)}
	for _, n := range revoked {
		l.RevokedCertificateEntries = append(l.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: now})
	}
	return x509.CreateRevocationList(rand.Reader, l, s.CA, s.CAKey)
}

func (s *Server) crl(w http.ResponseWriter, r *http.Request) {
	if _, ok := peer(r); !ok {
		http.Error(w, "client certificate required", http.StatusUnauthorized)
		return
	}
	der, err := s.CRL()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	w.Write(der)
}

// checkRevoked reads the revocation file (if any) and refuses serial.
func (s *Server) checkRevoked(serial *big.Int) error {
	if s.RevokedFile == "" {
		return nil
	}
	revoked, err := ReadRevoked(s.RevokedFile)
	if err != nil {
		return err
	}
	for _, r := range revoked {
		if r.Cmp(serial) == 0 {
			return fmt.Errorf("%w: serial %s", ErrRevoked, trust.FormatSerial(serial))
		}
	}
	return nil
}

// ReadRevoked reads a revocation file (attest.ReadRevoked).
func ReadRevoked(path string) ([]*big.Int, error) { return attest.ReadRevoked(path) }

// Revoke appends serial to the revocation file.
func Revoke(path, serial string) error {
	n, err := trust.ParseSerial(serial)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	if _, err := fmt.Fprintln(f, trust.FormatSerial(n)); err != nil {
		f.Close()
		return fmt.Errorf("revoke: %w", err)
	}
	return f.Close()
}

func (s *Server) logf(format string, args ...any) {
	if s.Log != nil {
		fmt.Fprintf(s.Log, "cluster: "+format+"\n", args...)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Quoter makes a quote for a nonce (the machine's attest.Make).
type Quoter func(nonce []byte) (*attest.Quote, error)

// JoinOptions are the machine's side of a join.
type JoinOptions struct {
	// Identity is the TLS client key (the TPM-resident identity key) and
	// IdentityCert its certificate chain (PEM).
	Identity     crypto.Signer
	IdentityCert []byte
	// ClusterCAs verify the server's certificate.
	ClusterCAs []*x509.Certificate
	Quote      Quoter
	Timeout    time.Duration // whole join; 60 s when zero
}

// JoinError is a refusal by the server.
type JoinError struct {
	Status int
	Reason string
	Report *attest.Report
}

func (e *JoinError) Error() string {
	return fmt.Sprintf("join refused (HTTP %d): %s", e.Status, e.Reason)
}

// Join connects to the server at base (https://HOST:PORT), proves the
// identity key in the TLS handshake, quotes the server's nonce and returns
// the cluster credential.
func Join(ctx context.Context, base string, o JoinOptions) (*Credential, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("join %q: want https://HOST:PORT", base)
	}
	certs, err := trust.ParseCerts(o.IdentityCert)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("join: identity certificate: %v", err)
	}
	if !samePublic(certs[0].PublicKey, o.Identity.Public()) {
		return nil, errors.New("join: the identity certificate is not for the identity key in this TPM")
	}
	if len(o.ClusterCAs) == 0 {
		return nil, errors.New("join: no cluster CA to verify the server with")
	}
	roots := x509.NewCertPool()
	for _, c := range o.ClusterCAs {
		roots.AddCert(c)
	}
	var chain [][]byte
	for _, c := range certs {
		chain = append(chain, c.Raw)
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tr := &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: roots,
		Certificates: []tls.Certificate{{Certificate: chain, PrivateKey: o.Identity, Leaf: certs[0]}},
	}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	var nr struct{ Nonce string }
	if err := post(ctx, hc, base+PathNonce, nil, &nr); err != nil {
		return nil, fmt.Errorf("join %s: nonce: %w", u.Host, err)
	}
	nonce, err := hex.DecodeString(nr.Nonce)
	if err != nil || len(nonce) < attest.MinNonce {
		return nil, fmt.Errorf("join %s: server sent a bad nonce %q", u.Host, nr.Nonce)
	}
	q, err := o.Quote(nonce)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", u.Host, err)
	}
	b, err := q.Marshal()
	if err != nil {
		return nil, err
	}
	var cred Credential
	if err := post(ctx, hc, base+PathJoin, b, &cred); err != nil {
		return nil, fmt.Errorf("join %s: %w", u.Host, err)
	}
	cc, err := trust.ParseCerts([]byte(cred.Certificate))
	if err != nil || len(cc) == 0 {
		return nil, fmt.Errorf("join %s: credential: %v", u.Host, err)
	}
	if _, err := cc[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("join %s: the credential does not chain to the cluster CA: %w", u.Host, err)
	}
	if !samePublic(cc[0].PublicKey, o.Identity.Public()) {
		return nil, fmt.Errorf("join %s: the credential is for another key", u.Host)
	}
	return &cred, nil
}

func post(ctx context.Context, hc *http.Client, url string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	rsp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer rsp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(rsp.Body, maxBody))
	if err != nil {
		return err
	}
	if rsp.StatusCode != http.StatusOK {
		var r refusal
		if json.Unmarshal(b, &r) != nil || r.Error == "" {
			r.Error = strings.TrimSpace(string(b))
		}
		return &JoinError{Status: rsp.StatusCode, Reason: r.Error, Report: r.Report}
	}
	return json.Unmarshal(b, out)
}

func samePublic(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// NewCA creates a cluster CA: an ECDSA P-256 key and a self-signed CA
// certificate valid for validFor.
func NewCA(org string, validFor time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{Organization: []string{org}, CommonName: org + " Cluster CA"},
		NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(validFor),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		MaxPathLen: 0, MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}
