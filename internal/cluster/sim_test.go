//go:build tpmsim

package cluster_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/vesselos/vessel/internal/attest"
	"github.com/vesselos/vessel/internal/attest/attesttest"
	"github.com/vesselos/vessel/internal/cluster"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
)

// serve starts srv on a free port of 127.0.0.1 and returns its URL.
func serve(t *testing.T, srv *cluster.Server) string {
	t.Helper()
	cfg, err := srv.TLSConfig([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv.Handler(), TLSConfig: cfg, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- hs.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		hs.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return "https://" + ln.Addr().String()
}

// handshake makes a TLS connection from a client presenting cert to a
// server that requires client certificates from clientCAs.
func handshake(t *testing.T, srv *cluster.Server, clientCAs *x509.CertPool, cert tls.Certificate) error {
	t.Helper()
	cfg, err := srv.TLSConfig([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.ClientCAs = clientCAs
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		srvErr <- c.(*tls.Conn).Handshake()
	}()
	roots := x509.NewCertPool()
	roots.AddCert(srv.CA)
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Handshake(); err != nil {
		return err
	}
	return <-srvErr
}

func TestJoin(t *testing.T) {
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	tp := tpm.New(transport.FromReadWriter(sim), nil, "simulator")
	k := attesttest.NewKeys(t, "Acme")
	// Locked, as a running system is: the identity key (the TLS key)
	// signs with its identity approval for the locked PCR7, nothing unseals.
	m := attesttest.Boot(t, tp, k, true)
	ca, caKey, err := cluster.NewCA("Acme", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pol := k.Policy()
	pol.AllowManifests = []string{m.Digest}
	pol.UKISigners = []*x509.Certificate{m.UKICert}
	revoked := filepath.Join(t.TempDir(), "revoked")
	srv := &cluster.Server{Policy: pol, CA: ca, CAKey: caKey, Validity: 10 * time.Minute, RevokedFile: revoked}
	url := serve(t, srv)

	quotes := 0
	var last *attest.Quote
	opts := cluster.JoinOptions{Identity: m.ID, IdentityCert: m.IDCert, ClusterCAs: []*x509.Certificate{ca},
		Quote: func(nonce []byte) (*attest.Quote, error) {
			quotes++
			q, err := attest.Make(attest.MakeOptions{TPM: tp, State: m.State, IdentityCert: m.IDCert, Nonce: nonce,
				FirmwareLog: m.FirmwareLog, VesselLog: m.VesselLog, Manifest: m.Signed})
			last = q
			return q, err
		}}
	join := func(o cluster.JoinOptions) (*cluster.Credential, error) {
		return cluster.Join(context.Background(), url, o)
	}
	refused := func(t *testing.T, err error, status int, why string) *cluster.JoinError {
		t.Helper()
		var je *cluster.JoinError
		if !errors.As(err, &je) || je.Status != status || !strings.Contains(je.Reason, why) {
			t.Fatalf("join: %v, want HTTP %d saying %q", err, status, why)
		}
		return je
	}

	var first *cluster.Credential
	t.Run("admitted", func(t *testing.T) {
		cred, err := join(opts)
		if err != nil {
			t.Fatalf("join: %v", err)
		}
		certs, err := trust.ParseCerts([]byte(cred.Certificate))
		if err != nil {
			t.Fatal(err)
		}
		c := certs[0]
		pool := x509.NewCertPool()
		pool.AddCert(ca)
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("credential: %v", err)
		}
		if !m.ID.Public().(*ecdsa.PublicKey).Equal(c.PublicKey) {
			t.Fatal("the credential is not for the identity key")
		}
		if life := time.Until(c.NotAfter); life > 10*time.Minute || life < 9*time.Minute {
			t.Fatalf("credential valid for %v, want 10m", life)
		}
		if id, err := trust.MachineID(c); err != nil || id != m.MachineID || c.Subject.CommonName != m.MachineID {
			t.Fatalf("credential machine %q (%v), CN %q", id, err, c.Subject.CommonName)
		}
		if cred.Report == nil || cred.Report.Manifest.Digest != m.Digest || !cred.Report.Locked {
			t.Fatalf("report %+v", cred.Report)
		}
		// A cluster peer that trusts only the cluster CA accepts the
		// machine's TLS connection with the credential and the identity key.
		peerCA := x509.NewCertPool()
		peerCA.AddCert(ca)
		if err := handshake(t, srv, peerCA, tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: m.ID}); err != nil {
			t.Fatalf("TLS with the credential: %v", err)
		}
		first = cred
	})

	t.Run("every join attests again", func(t *testing.T) {
		before := quotes
		cred, err := join(opts)
		if err != nil {
			t.Fatal(err)
		}
		if quotes != before+1 || cred.Serial == first.Serial {
			t.Fatalf("second join: %d new quotes, serial %s (first %s)", quotes-before, cred.Serial, first.Serial)
		}
	})

	t.Run("replayed quote", func(t *testing.T) {
		old := last
		o := opts
		o.Quote = func([]byte) (*attest.Quote, error) { return old, nil }
		_, err := join(o)
		refused(t, err, http.StatusForbidden, "unknown or already used nonce")
		// The old quote under the new nonce: the TPM signed the old one.
		o.Quote = func(n []byte) (*attest.Quote, error) { q := *old; q.Nonce = n; return &q, nil }
		_, err = join(o)
		refused(t, err, http.StatusForbidden, "nonce: quote nonce")
	})

	t.Run("manifest not on the allow list", func(t *testing.T) {
		srv.Policy.AllowManifests = []string{"sha256:" + strings.Repeat("00", 32)}
		defer func() { srv.Policy.AllowManifests = pol.AllowManifests }()
		_, err := join(opts)
		je := refused(t, err, http.StatusForbidden, "allow-list: "+m.Digest+" (version 7) is not allowed")
		if je.Report == nil || je.Report.MachineID != m.MachineID {
			t.Fatalf("refusal carries no report: %+v", je.Report)
		}
	})

	t.Run("another product", func(t *testing.T) {
		srv.Policy.ProductID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
		defer func() { srv.Policy.ProductID = pol.ProductID }()
		_, err := join(opts)
		refused(t, err, http.StatusForbidden, "product: identity certificate is of product "+k.PID)
	})

	t.Run("UKI signed by another db key", func(t *testing.T) {
		srv.Policy.UKISigners = []*x509.Certificate{ca}
		defer func() { srv.Policy.UKISigners = pol.UKISigners }()
		_, err := join(opts)
		refused(t, err, http.StatusForbidden, "uki-signer: verified by")
	})

	t.Run("quote for another identity than the TLS peer", func(t *testing.T) {
		other := k.IdentityCert(t, m.CSR, k.PID, "m-0002")
		o := opts
		o.Quote = func(n []byte) (*attest.Quote, error) {
			q, err := opts.Quote(n)
			if err == nil {
				q.Identity = string(other)
			}
			return q, err
		}
		_, err := join(o)
		refused(t, err, http.StatusForbidden, "the quote is for machine m-0002")
	})

	t.Run("identity from another CA", func(t *testing.T) {
		o := opts
		o.IdentityCert = attesttest.NewKeys(t, "Evil").IdentityCert(t, m.CSR, k.PID, m.MachineID)
		_, err := join(o)
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("join with an identity of another CA: %v", err)
		}
	})

	t.Run("revoked", func(t *testing.T) {
		certs, err := trust.ParseCerts(m.IDCert)
		if err != nil {
			t.Fatal(err)
		}
		if err := cluster.Revoke(revoked, trust.FormatSerial(certs[0].SerialNumber)); err != nil {
			t.Fatal(err)
		}
		_, err = join(opts)
		refused(t, err, http.StatusForbidden, "identity certificate revoked: serial "+trust.FormatSerial(certs[0].SerialNumber))
		// Revoking the first credential's serial puts it on the cluster
		// CA's CRL, which peers fetch from the server.
		if err := cluster.Revoke(revoked, first.Serial); err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest(http.MethodGet, cluster.PathCRL, nil)
		req.TLS = &tls.ConnectionState{PeerCertificates: certs, VerifiedChains: [][]*x509.Certificate{certs}}
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", cluster.PathCRL, rec.Code, rec.Body)
		}
		crl, err := x509.ParseRevocationList(rec.Body.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if err := crl.CheckSignatureFrom(ca); err != nil {
			t.Fatalf("CRL signature: %v", err)
		}
		var serials []string
		for _, e := range crl.RevokedCertificateEntries {
			serials = append(serials, trust.FormatSerial(e.SerialNumber))
		}
		if !slices.Contains(serials, first.Serial) || !slices.Contains(serials, trust.FormatSerial(certs[0].SerialNumber)) {
			t.Fatalf("CRL lists %v, want %s and the identity serial", serials, first.Serial)
		}
	})
}
