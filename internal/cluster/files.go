package cluster

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/vesselos/vessel/internal/atomicfile"
	"github.com/vesselos/vessel/internal/trust"
)

// File names in a cluster CA directory.
const (
	CACert = "cluster-ca.pem"
	CAKey  = "cluster-ca.key"
)

// WriteCA writes a cluster CA into dir (key 0600, PKCS#8 PEM); it refuses
// to overwrite an existing CA.
func WriteCA(dir string, cert *x509.Certificate, key *ecdsa.PrivateKey) error {
	for _, f := range []string{CACert, CAKey} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return fmt.Errorf("write cluster CA: %s exists", filepath.Join(dir, f))
		}
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write cluster CA: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, CAKey), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("write cluster CA key: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, CACert), trust.PEMCerts(cert), 0o644); err != nil {
		return fmt.Errorf("write cluster CA certificate: %w", err)
	}
	return nil
}

// ReadCA reads the cluster CA of dir.
func ReadCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	return trust.LoadCA(filepath.Join(dir, CACert), filepath.Join(dir, CAKey))
}

// WriteCredential writes the cluster certificate, then the cluster CA, as
// PEM to path (atomically, 0644: the key stays in the TPM).
func WriteCredential(path string, c *Credential) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write cluster certificate: %w", err)
	}
	if err := atomicfile.Write(path, []byte(c.Certificate+c.CA), 0o644); err != nil {
		return fmt.Errorf("write cluster certificate: %w", err)
	}
	return nil
}

// ListenAndServe serves s on addr (HOST:PORT; port 0 picks one) until ctx
// ends, with a server certificate for addr's host and names. ready, if
// not nil, is called with the address once it listens.
func (s *Server) ListenAndServe(ctx context.Context, addr string, names []string, ready func(string)) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("cluster serve: address %q: %w", addr, err)
	}
	cfg, err := s.TLSConfig(append([]string{host}, names...))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("cluster serve: %w", err)
	}
	var errLog io.Writer = io.Discard
	if s.Log != nil {
		errLog = s.Log
	}
	hs := &http.Server{Handler: s.Handler(), TLSConfig: cfg, ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: time.Minute, WriteTimeout: time.Minute, ErrorLog: log.New(errLog, "cluster: ", 0)}
	if ready != nil {
		ready(ln.Addr().String())
	}
	done := make(chan error, 1)
	go func() { done <- hs.ServeTLS(ln, "", "") }()
	select {
	case err := <-done:
		return fmt.Errorf("cluster serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("cluster serve: shut down: %w", err)
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("cluster serve: %w", err)
	}
	return nil
}
