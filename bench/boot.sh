#!/usr/bin/env bash
# Boot benchmark: vessel's initrd (none, zstd: the default, stripped+zstd) against a Debian
# mkinitramfs initrd for the same kernel, each in a UKI signed with the same
# db key, booted once under OVMF Secure Boot (qemu TCG, swtpm). Prints size,
# build time, the boot split (firmware, kernel, initrd to its first
# userspace line) and the ratios against Debian's. Needs root (mkinitramfs
# reads /lib/modules; the VM needs none) and make deps.
#   bench/boot.sh [-n BOOTS] [--json]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
CGO_ENABLED=0 go build -trimpath -o bin/vessel ./cmd/vessel
exec go run ./bench/bootbench -vessel bin/vessel "$@"
