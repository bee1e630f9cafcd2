package initrd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vesselos/vessel/internal/attest"
	"github.com/vesselos/vessel/internal/cluster"
	"github.com/vesselos/vessel/internal/registry"
	"github.com/vesselos/vessel/internal/tpm"
	"github.com/vesselos/vessel/internal/trust"
)

// joinClusters joins every cluster named by vessel.cluster= (secure
// cluster bring-up at boot): mutual TLS with the TPM-resident identity key
// (authorized by the installed signed policy), a quote of PCRs 0-7 and 15
// for the server's nonce with the firmware's and vessel's logs and the
// installed signed manifest. Each result is one line:
//
//	vessel-host: cluster joined URL: certificate SERIAL for MACHINE until TIME (manifest DIGEST version N, PCR7 locked: BOOL)
//	vessel-host: cluster join URL refused: REASON
//
// A refusal does not stop the boot: the machine runs, outside the cluster.
func joinClusters(printf func(string, ...any), cmdline string) {
	urls, err := ParseCluster(cmdline)
	if err != nil {
		printf("cluster: %v", err)
		return
	}
	if len(urls) == 0 {
		return
	}
	if err := unix.Mount("securityfs", "/sys/kernel/security", "securityfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		printf("cluster: mount securityfs: %v", err)
	}
	joined := false
	for _, u := range urls {
		cred, err := joinCluster(u)
		if err != nil {
			printf("cluster join %s refused: %v", u, err)
			continue
		}
		printf("cluster joined %s: certificate %s for %s until %s (manifest %s version %d, PCR7 locked: %t)", u, cred.Serial,
			cred.Report.MachineID, cred.NotAfter.UTC().Format(time.RFC3339), cred.Report.Manifest.Digest, cred.Report.Manifest.Version, cred.Report.Locked)
		if !joined {
			if err := cluster.WriteCredential(ClusterCertFile, cred); err != nil {
				printf("cluster: %v", err)
			}
			joined = true
		}
	}
}

func joinCluster(url string) (*cluster.Credential, error) {
	st := tpm.State{Dir: HostTPMState}
	cas, err := trust.LoadCerts(ClusterCAFile)
	if err != nil {
		return nil, err
	}
	cert, err := os.ReadFile(IdentityCertFile)
	if err != nil {
		return nil, fmt.Errorf("identity certificate: %w", err)
	}
	var signed []byte
	if cur, err := registry.ReadCurrent(HostDataDir); err == nil && filepath.IsLocal(cur.Signed) {
		signed, _ = os.ReadFile(filepath.Join(HostDataDir, cur.Signed))
	}
	t, err := tpm.Open(TPMDevice)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	// The signed policy for this boot's PCR7: after the initrd's lock, the
	// one whose identity approval is for the locked PCR7.
	cur, err := t.PCR7()
	if err != nil {
		return nil, err
	}
	p, err := st.PolicyFor(cur)
	if err != nil {
		return nil, err
	}
	id, err := t.Identity(st, p, nil)
	if err != nil {
		return nil, err
	}
	if _, err := t.AttestationKey(st, id); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return cluster.Join(ctx, url, cluster.JoinOptions{Identity: id, IdentityCert: cert, ClusterCAs: cas,
		Quote: func(nonce []byte) (*attest.Quote, error) {
			return attest.Make(attest.MakeOptions{TPM: t, State: st, IdentityCert: cert, Nonce: nonce, Manifest: signed})
		}})
}
