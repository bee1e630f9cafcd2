#!/usr/bin/env bash
# Installs the Debian packages vessel's tests, demo and benchmarks use.
# Idempotent: installs only what is missing, runs apt-get update at most once.
set -euo pipefail
pkgs=(
  squashfs-tools erofs-utils cryptsetup-bin   # layer images and the independent verity checker
  skopeo umoci                                # independent OCI layout checkers
  runc crun squashfuse fuse-overlayfs uidmap  # containers (both OCI runtimes), rootless mounts
  catatonit                                   # vessel run --init: podman's tiny static init
  swtpm swtpm-tools tpm2-tools libssl-dev gcc # TPM: emulator, checker, simulator (cgo, tests only)
  tpm2-openssl                                # openssl tpm2 provider: signs with vessel's TPM key files (tests)
  docker-registry                             # a real registry for distribution tests
  busybox-static attr openssl util-linux make # example rootfs, xattr tools, cert checks, mount/losetup
  systemd-boot-efi ovmf                       # boot: the UKI stub, OVMF firmware and VARS templates
  sbsigntool osslsigncode efitools binutils cpio # boot: independent checkers (sbverify, osslsigncode, efitools, objdump)
  qemu-system-x86 linux-image-amd64           # boot: VM tests (TCG, OVMF Secure Boot) with Debian's kernel and modules
  dosfstools mtools e2fsprogs fdisk           # boot: ESP and data partition (mkfs.vfat/mtools, mkfs.ext4) and their checkers (fsck.vfat, e2fsck, sfdisk)
  initramfs-tools zstd                        # boot: the mkinitramfs initrd the boot benchmark compares against
  qemu-user-static                            # other architectures: static emulators + binfmt.d rules (vessel binfmt)
  curl                                        # make vm-demo: fetches the guest's web page through hostfwd
  netcat-openbsd                              # VM tests: qemu guestfwd cmd:nc to a registry (network boot) or cluster servers (cluster join) on 127.0.0.1
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing Debian packages: ${missing[*]}" >&2
    echo "deps: run 'sudo make deps' (or install them) and try again" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}" >&2
  if [ -z "${VESSEL_APT_UPDATED:-}" ]; then apt-get update -qq; VESSEL_APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Cross-architecture tests: Debian's static arm64 busybox is the content of
# the arm64 test images. It cannot be installed next to the amd64
# busybox-static (same paths), so its package is unpacked into a cache.
arm64_busybox=/var/cache/vessel-test/arm64/busybox
if [ "$(dpkg --print-architecture)" != arm64 ] && [ ! -x "$arm64_busybox" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: $arm64_busybox is missing: run 'sudo make deps'" >&2
    exit 1
  fi
  echo "deps: fetching busybox-static:arm64 into $arm64_busybox" >&2
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    VESSEL_APT_UPDATED=
  fi
  if [ -z "${VESSEL_APT_UPDATED:-}" ]; then apt-get update -qq; fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq busybox-static:arm64 2>/dev/null)
  dpkg-deb -x "$tmp"/busybox-static_*_arm64.deb "$tmp/x"
  install -D -m 0755 "$tmp/x/bin/busybox" "$arm64_busybox"
fi
