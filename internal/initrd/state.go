package initrd

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/vesselos/vessel/internal/luks2"
	"github.com/vesselos/vessel/internal/measure"
	"github.com/vesselos/vessel/internal/tpm"
)

// Paths of the TPM step (docs/tpm.md "Boot flow").
const (
	// PolicyKeyFile is the TPM policy-signing public key in the initrd
	// (inside the signed UKI). Without it the initrd does not use the TPM
	// beyond measuring the manifest.
	PolicyKeyFile = "/etc/vessel/tpm-policy.pem"
	// TPMStateDir is vessel's TPM state on the data partition (sealed
	// blobs, usable only in this machine's TPM); PoliciesDir holds the
	// signed policies the product ships, one of which matches this boot's PCR7.
	TPMStateDir = DataMount + "/tpm"
	PoliciesDir = DataMount + "/tpm/policies"
	// StatePartition is the GPT name of the encrypted state partition.
	StatePartition = "vessel-state"
	// StateMapper is its device-mapper name once opened.
	StateMapper = "vessel-state"
	// StateMount is where the opened state volume is mounted; /run moves
	// into the host, so the host sees it at the same path.
	StateMount = "/run/vessel/state"
	// StateSecret is the name of the sealed LUKS2 passphrase.
	StateSecret = "state"
	// StateMarkerFile is what vessel.test=tpm appends to on the volume.
	StateMarkerFile = StateMount + "/vessel-boots"
	// VolumesDir is where the host's supervisor keeps service volumes
	// (the store root's volumes/, i.e. /var/lib/vessel/volumes). With a
	// state partition it is the state volume's volumes/ (bind mount), or,
	// when the volume cannot be opened, an empty tmpfs: service state is
	// never written to the plain data partition.
	VolumesDir = DataMount + "/volumes"
)

const msBind = 0x1000

// stateSystem is what the TPM step needs from the kernel beyond system.
type stateSystem interface {
	// openLUKS unlocks the LUKS2 volume dev with passphrase into a
	// device-mapper device named name and returns its /dev path.
	openLUKS(dev string, passphrase []byte, name string) (string, error)
}

// TPMReport is what the TPM step did, for the console and the boot record.
type TPMReport struct {
	Provisioned bool   `json:"provisioned,omitempty"`
	Policy      string `json:"policy,omitempty"` // the file that unsealed
	Unsealed    bool   `json:"unsealed"`
	Volume      string `json:"volume,omitempty"` // mounted state volume
	Locked      bool   `json:"locked"`
	Accepted    uint64 `json:"acceptedVersion,omitempty"` // the TPM's anti-rollback version
	Failure     string `json:"failure,omitempty"`
	Commands    int    `json:"tpmCommands"`
	TPMMillis   int64  `json:"tpmMillis"`  // time in TPM commands
	Millis      int64  `json:"stepMillis"` // the whole step (KDF, dm-crypt, mount too)
}

// tpmBoot is the TPM step of the verified boot, run after the manifest
// (of version version) verified and before the host is mounted. With no policy key in the
// initrd it does nothing. Otherwise:
//
//  1. no TPM: say so; the state volume stays closed; the boot goes on;
//  2. first boot (no TPM state on the data partition, TPM unowned, state
//     partition not yet encrypted): provision the TPM, seal a random
//     passphrase, make the state partition a LUKS2 volume;
//  3. refuse a manifest version below the TPM's accepted version (an
//     error: the boot stops);
//  4. unseal the passphrase with the signed policy for this PCR7, open
//     and mount the state volume; any failure is printed with its cause
//     (PCR mismatch with both values, another key, revoked, lockout) and
//     the boot goes on without the volume;
//  5. lock: extend PCR7 (tpm.LockEvent) and record it in measure.LogFile.
func (s *Stage) tpmBoot(version int64, dev tpmDevice, openErr error, test bool) (rep *TPMReport, err error) {
	keyPEM, err := os.ReadFile(s.path(PolicyKeyFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("TPM: read the policy key: %w", err)
	}
	pub, err := tpm.ParsePublicKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("TPM: policy key %s: %w", PolicyKeyFile, err)
	}
	rep = &TPMReport{}
	t, _ := dev.(*tpm.TPM)
	if t == nil {
		if openErr == nil {
			openErr = errors.New("this system has no TPM to open")
		}
		rep.Failure = fmt.Sprintf("no TPM (%v)", openErr)
		s.printf("TPM FAILED: %s: the state volume stays locked; anti-rollback falls back to trust/versions.json", rep.Failure)
		return rep, nil
	}
	// Sessions, keys and passphrases need the kernel's random number
	// generator; early in a boot getrandom blocks until it is seeded.
	// Waiting here keeps that wait out of the TPM numbers and names it.
	r0 := time.Now()
	var one [1]byte
	if _, err := rand.Read(one[:]); err != nil {
		return rep, fmt.Errorf("TPM: random number generator: %w", err)
	}
	s.printf("TPM: the kernel's random number generator was ready after %dms", time.Since(r0).Milliseconds())
	start, cmds0, busy0 := time.Now(), t.Commands(), t.Busy()
	done := false
	summary := func() {
		if done {
			return
		}
		done = true
		rep.Commands, rep.TPMMillis, rep.Millis = t.Commands()-cmds0, (t.Busy() - busy0).Milliseconds(), time.Since(start).Milliseconds()
		s.printf("TPM: %d commands, %dms in the TPM, step %dms", rep.Commands, rep.TPMMillis, rep.Millis)
	}
	defer summary()
	st := tpm.State{Dir: s.path(TPMStateDir)}
	stateDev, hasState, err := FindPartition(s.Root, StatePartition)
	if err != nil {
		return rep, err
	}
	if hasState {
		stateDev = s.path(stateDev)
	}
	if _, err := st.Record(); errors.Is(err, tpm.ErrNotProvisioned) {
		if err := s.provision(t, st, pub, version, stateDev, hasState, rep); err != nil {
			rep.Failure = err.Error()
			s.printf("TPM FAILED: %v: the state volume stays locked", err)
			return rep, s.lock(t, rep)
		}
	} else if err != nil {
		rep.Failure = err.Error()
		s.printf("TPM FAILED: %v", err)
		return rep, s.lock(t, rep)
	}
	acc, err := t.CheckVersion(uint64(version))
	switch {
	case errors.Is(err, tpm.ErrRollback):
		return rep, fmt.Errorf("verified boot refused: %w", err)
	case err != nil:
		s.printf("TPM WARNING: anti-rollback counter: %v", err)
	default:
		rep.Accepted = acc
		s.printf("TPM: manifest version %d >= accepted version %d (NV counter)", version, acc)
		// The default slot (confirmed, or installed) is what this machine
		// runs: the counter follows it, as trust/versions.json does when
		// its services start. A trial moves it only once confirmed.
		if uint64(version) > acc && !s.trial {
			if acc, err = t.AdvanceVersion(uint64(version)); err != nil {
				s.printf("TPM WARNING: advance the accepted version to %d: %v", version, err)
			} else {
				rep.Accepted = acc
				s.printf("TPM: accepted version advanced to %d (NV counter)", acc)
			}
		}
	}
	pass, pol, err := s.unsealState(t, st, pub)
	if err != nil {
		rep.Failure = err.Error()
		s.printf("TPM FAILED: cannot unseal the state volume key: %v", err)
		s.printf("state volume NOT mounted")
		if hasState {
			s.volumes(false)
		}
		return rep, s.lock(t, rep)
	}
	rep.Unsealed, rep.Policy = true, pol.Comment
	if hasState {
		if err := s.mountState(stateDev, pass, rep); err != nil {
			rep.Failure = err.Error()
			s.printf("FAILED: state volume: %v", err)
		}
	}
	clear(pass)
	if hasState {
		s.volumes(rep.Volume != "")
	}
	if err := s.lock(t, rep); err != nil {
		return rep, err
	}
	summary() // the checks below are not part of a boot
	if test {
		s.checkLocked(t, st, pol)
	}
	return rep, nil
}

// provision is the first boot: it refuses when a TPM or a volume was set
// up before (their secrets are gone: recovery, not a silent new volume).
func (s *Stage) provision(t *tpm.TPM, st tpm.State, pub *ecdsa.PublicKey, version int64, stateDev string, hasState bool, rep *TPMReport) (err error) {
	if hasState {
		enc, err := luks2.IsLUKS(stateDev)
		if err != nil {
			return fmt.Errorf("read state partition %s: %w", stateDev, err)
		}
		if enc {
			return fmt.Errorf("the state partition %s is already encrypted but %s holds no TPM state (deleted, or the disk moved to another machine): not provisioning over it; restore %s or recover the volume with the recovery secret", stateDev, TPMStateDir, TPMStateDir)
		}
	}
	if err := s.dataWritable(true); err != nil {
		return fmt.Errorf("provision: remount the data partition read-write: %w", err)
	}
	defer func() {
		if rerr := s.dataWritable(false); rerr != nil && err == nil {
			err = fmt.Errorf("provision: remount the data partition read-only: %w", rerr)
		}
	}()
	res, err := t.Provision(st, pub, tpm.ProvisionOptions{Version: uint64(version)})
	if err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	rep.Provisioned = true
	s.printf("TPM provisioned (first boot): SRK %x, accepted manifest version %d", []byte(res.SRKName), version)
	s.printf("TPM recovery secret (shown once, write it down): %s", res.Recovery)
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	pass := []byte(hex.EncodeToString(raw))
	if err := t.Seal(st, StateSecret, pass, false); err != nil {
		return fmt.Errorf("seal the state volume passphrase: %w", err)
	}
	if !hasState {
		s.printf("TPM: no %s partition: nothing to encrypt", StatePartition)
		return nil
	}
	vk := make([]byte, luks2.KeySize)
	if _, err := rand.Read(vk); err != nil {
		return err
	}
	defer clear(vk)
	t0 := time.Now()
	if err := luks2.Format(stateDev, vk, pass, luks2.Options{Label: StatePartition}); err != nil {
		return fmt.Errorf("encrypt the state partition: %w", err)
	}
	n, err := luks2.EncryptInPlace(stateDev, vk)
	if err != nil {
		return fmt.Errorf("encrypt the state partition: %w", err)
	}
	s.printf("state partition %s encrypted: LUKS2 aes-xts-plain64, %d MiB in %dms", stateDev, n>>20, time.Since(t0).Milliseconds())
	return nil
}

// unsealState unseals the passphrase with the shipped policy for the
// current PCR7, naming the cause when none works.
func (s *Stage) unsealState(t *tpm.TPM, st tpm.State, pub *ecdsa.PublicKey) ([]byte, *tpm.SignedPolicy, error) {
	keyName, err := tpm.PolicyKeyName(pub)
	if err != nil {
		return nil, nil, err
	}
	r, err := st.Record()
	if err != nil {
		return nil, nil, err
	}
	if string(r.PolicyKeyName) != string(keyName) {
		return nil, nil, fmt.Errorf("%w: the TPM was provisioned for policy key %x, this initrd carries %x", tpm.ErrWrongPolicyKey, []byte(r.PolicyKeyName), keyName)
	}
	files, _ := filepath.Glob(s.path(PoliciesDir) + "/*.signed")
	sort.Strings(files)
	var pols []*tpm.SignedPolicy
	var other []string
	for _, f := range files {
		p, err := tpm.ReadPolicy(f)
		if err != nil {
			s.printf("TPM: policy %s ignored: %v", filepath.Base(f), err)
			if errors.Is(err, tpm.ErrWrongPolicyKey) {
				other = append(other, filepath.Base(f))
			}
			continue
		}
		if string(p.KeyName) != string(keyName) {
			other = append(other, filepath.Base(f))
			continue
		}
		p.Comment = filepath.Base(f)
		pols = append(pols, p)
	}
	cur, err := t.PCR7()
	if err != nil {
		return nil, nil, err
	}
	var match []*tpm.SignedPolicy
	var expected []string
	for _, p := range pols {
		expected = append(expected, fmt.Sprintf("%x (%s, version %d)", []byte(p.PCR7), p.Comment, p.Version))
		if string(p.PCR7) == string(cur) {
			match = append(match, p)
		}
	}
	if len(match) == 0 {
		if len(pols) == 0 && len(other) > 0 {
			return nil, nil, fmt.Errorf("%w: %s signed by another key (not the initrd's %s)", tpm.ErrWrongPolicyKey, strings.Join(other, ", "), PolicyKeyFile)
		}
		if len(pols) == 0 {
			return nil, nil, fmt.Errorf("no signed policy in %s: ship the policy signed for this machine's PCR7 there (docs/tpm.md)", PoliciesDir)
		}
		return nil, nil, fmt.Errorf("%w: actual PCR7 %x, expected %s (booted with a kernel signed by another db key, Secure Boot off, or a dbx/firmware update without a new signed policy)",
			tpm.ErrPolicyMismatch, cur, strings.Join(expected, " or "))
	}
	slices.SortFunc(match, func(a, b *tpm.SignedPolicy) int { return int(b.Version) - int(a.Version) })
	var errs []error
	for _, p := range match {
		t0 := time.Now()
		pass, err := t.Unseal(st, StateSecret, p, nil)
		if err == nil {
			s.printf("TPM: unsealed the state volume key with policy %s (PCR7 %x, version %d) in %dms", p.Comment, cur, p.Version, time.Since(t0).Milliseconds())
			return pass, p, nil
		}
		errs = append(errs, fmt.Errorf("policy %s: %w", p.Comment, err))
	}
	return nil, nil, errors.Join(errs...)
}

// mountState opens the LUKS2 volume and mounts it at StateMount.
func (s *Stage) mountState(dev string, pass []byte, rep *TPMReport) error {
	ss, ok := s.sys.(stateSystem)
	if !ok {
		return errors.New("this system cannot open encrypted volumes")
	}
	t0 := time.Now()
	dm, err := ss.openLUKS(dev, pass, StateMapper)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	if err := s.sys.mount(Mount{Source: dm, Target: s.path(StateMount), FSType: "ext4", Flags: msNoSuid | msNoDev}); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", dm, dev, StateMount, err)
	}
	rep.Volume = StateMount
	s.printf("state volume %s opened (%s) and mounted on %s in %dms", dev, dm, StateMount, time.Since(t0).Milliseconds())
	return nil
}

// volumes puts the service volumes on the state volume (mounted) or on an
// empty tmpfs (not mounted), over VolumesDir, which switch_root moves into
// the host with the data partition.
func (s *Stage) volumes(mounted bool) {
	if _, ok := s.sys.(stateSystem); !ok {
		return
	}
	if _, err := os.Stat(s.path(VolumesDir)); err != nil {
		if err := s.dataWritable(true); err == nil {
			os.MkdirAll(s.path(VolumesDir), 0o700)
			s.dataWritable(false)
		}
	}
	var m Mount
	if mounted {
		os.MkdirAll(s.path(StateMount+"/volumes"), 0o700)
		m = Mount{Source: s.path(StateMount + "/volumes"), Target: s.path(VolumesDir), Flags: msBind}
	} else {
		m = Mount{Source: "tmpfs", Target: s.path(VolumesDir), FSType: "tmpfs", Flags: msNoSuid | msNoDev, Data: "mode=0700"}
	}
	if err := s.sys.mount(m); err != nil {
		s.printf("FAILED: service volumes on %s: %v", VolumesDir, err)
		return
	}
	if mounted {
		s.printf("service volumes: %s is the state volume's volumes/", VolumesDir)
	} else {
		s.printf("service volumes: %s is an empty tmpfs for this boot (the state volume is locked)", VolumesDir)
	}
}

// lock extends PCR7 so that nothing later in this boot unseals, and
// records the extension for an attestation verifier.
func (s *Stage) lock(t *tpm.TPM, rep *TPMReport) error {
	if err := t.Lock(); err != nil {
		return fmt.Errorf("TPM lock: %w", err)
	}
	if err := (measure.Log{Path: s.path(measure.LogFile)}).Append(measure.NewEvent(7, measure.TypeLock, tpm.LockEvent)); err != nil {
		return fmt.Errorf("TPM lock: extended PCR7 but %w", err)
	}
	rep.Locked = true
	pcr, _ := t.PCR7()
	s.printf("TPM locked: PCR7 extended with %q, now %x", tpm.LockEvent, pcr)
	return nil
}

// checkLocked (vessel.test=tpm) shows that after the lock the volume key
// no longer unseals while the identity key still signs, and appends this
// boot to the marker file on the volume.
func (s *Stage) checkLocked(t *tpm.TPM, st tpm.State, p *tpm.SignedPolicy) {
	_, err := t.Unseal(st, StateSecret, p, nil)
	s.printf("TPM test: unseal after lock refused=%t locked=%t: %v", err != nil, errors.Is(err, tpm.ErrLocked), err)
	id, err := t.Identity(st, p, nil)
	if err == nil {
		msg := sha256.Sum256([]byte("vessel identity after lock"))
		var sig []byte
		if sig, err = id.Sign(nil, msg[:], crypto.SHA256); err == nil && !ecdsa.VerifyASN1(id.Public().(*ecdsa.PublicKey), msg[:], sig) {
			err = errors.New("signature does not verify")
		}
	}
	s.printf("TPM test: identity sign after lock ok=%t %v", err == nil, err)
	if _, err := os.Stat(s.path(StateMount)); err != nil {
		return
	}
	prev, _ := os.ReadFile(s.path(StateMarkerFile))
	s.printf("TPM test: state volume marker before this boot: %q", strings.TrimSpace(string(prev)))
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	line := "vessel-state-marker boot " + strings.TrimSpace(string(b)) + "\n"
	f, err := os.OpenFile(s.path(StateMarkerFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err == nil {
		_, err = f.WriteString(line)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	s.printf("TPM test: appended to the state volume marker: %v", err)
}

// CheckHostTPM (vessel.test=tpm, on the host after switch_root) shows what
// the running system can do with the TPM after the initrd's lock: find the
// shipped policy for its (locked) PCR7 in STATE/policies, fail to unseal
// the state volume's passphrase with it, sign with the identity key.
func CheckHostTPM(printf func(string, ...any), t *tpm.TPM, stateDir string) {
	st := tpm.State{Dir: stateDir}
	cur, err := t.PCR7()
	if err != nil {
		printf("tpm: %v", err)
		return
	}
	p, err := st.PolicyFor(cur)
	if err != nil {
		printf("tpm: running system, PCR7 %x: %v", cur, err)
		return
	}
	_, err = t.Unseal(st, StateSecret, p, nil)
	printf("tpm: unseal from the running system refused=%t locked=%t (policy %s)", err != nil, errors.Is(err, tpm.ErrLocked), p.Comment)
	id, err := t.Identity(st, p, nil)
	if err == nil {
		msg := sha256.Sum256([]byte("vessel identity on the running system"))
		var sig []byte
		if sig, err = id.Sign(nil, msg[:], crypto.SHA256); err == nil && !ecdsa.VerifyASN1(id.Public().(*ecdsa.PublicKey), msg[:], sig) {
			err = errors.New("signature does not verify")
		}
	}
	printf("tpm: identity sign from the running system ok=%t %v", err == nil, err)
}
