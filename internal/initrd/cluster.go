package initrd

import (
	"fmt"
	"strings"
)

// Files of the host's TPM state directory that cluster bring-up uses (the
// data partition's tpm/, vessel tpm --state's default on the host).
const (
	// HostTPMState is vessel's TPM state directory on the host.
	HostTPMState = HostDataDir + "/tpm"
	// ClusterCAFile is the cluster CA the host verifies servers with.
	ClusterCAFile = HostTPMState + "/cluster-ca.pem"
	// IdentityCertFile is the machine identity certificate.
	IdentityCertFile = HostTPMState + "/identity.pem"
	// ClusterCertFile is where the host keeps the credential of its first
	// successful join.
	ClusterCertFile = "/run/vessel/cluster.pem"
)

// ParseCluster reads vessel.cluster=URL[,URL...] from a kernel command
// line: the clusters the host joins at boot (the command line is part of
// the signed UKI).
func ParseCluster(cmdline string) ([]string, error) {
	var urls []string
	for _, f := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(f, "vessel.cluster=")
		if !ok {
			continue
		}
		for _, u := range strings.Split(v, ",") {
			if !strings.HasPrefix(u, "https://") || len(u) == len("https://") {
				return nil, fmt.Errorf("vessel.cluster=%s: want https://HOST:PORT[,https://HOST:PORT...]", v)
			}
			urls = append(urls, u)
		}
	}
	return urls, nil
}
