#!/usr/bin/env bash
# bench/xarch.sh: the same recipe steps built natively (amd64) and emulated
# (arm64 through qemu-user-static, binfmt_misc F flag) on this amd64 machine:
#   compute: busybox sha256sum over 256 MiB of zeros (CPU-bound: qemu's TCG)
#   spawn:   1000 process starts (each exec starts a fresh qemu emulator)
# Each step is timed from its "run" to its "making the layer" progress line
# of `vessel build --no-cache`, median of RUNS; printed with the ratio
# emulated/native (the figure quoted elsewhere is 8-10x).
# Usage: bench/xarch.sh [RUNS]   (default 3; run as root; needs qemu-user-static
# and the arm64 busybox that `make deps` fetches)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
arm64_busybox=/var/cache/vessel-test/arm64/busybox
[ "$(id -u)" -eq 0 ] || { echo "bench/xarch.sh: run as root (builds mount layers, binfmt registration)" >&2; exit 1; }
[ "$(uname -m)" = x86_64 ] || { echo "bench/xarch.sh: written for an amd64 machine (native amd64, emulated arm64)" >&2; exit 1; }
[ -x "$arm64_busybox" ] && [ -x /usr/bin/qemu-aarch64-static ] || { echo "bench/xarch.sh: needs qemu-user-static and $arm64_busybox: run 'make deps'" >&2; exit 1; }
tmp=$(mktemp -d /var/tmp/vessel-bench-xarch.XXXXXX)
trap 'rm -rf "$tmp"' EXIT INT TERM
(cd "$repo" && CGO_ENABLED=0 go build -o bin/vessel ./cmd/vessel)
vessel=$repo/bin/vessel
export SOURCE_DATE_EPOCH=1700000000 VESSEL_ROOT=$tmp/store VESSEL_RUN=$tmp/run
"$vessel" binfmt install --arch arm64 >/dev/null

for a in amd64 arm64; do
  mkdir -p "$tmp/rootfs-$a/bin"
  if [ $a = amd64 ]; then cp /bin/busybox "$tmp/rootfs-$a/bin/"; else cp "$arm64_busybox" "$tmp/rootfs-$a/bin/busybox"; fi
  ln -s busybox "$tmp/rootfs-$a/bin/sh"
  tar -C "$tmp/rootfs-$a" -cf "$tmp/$a.tar" .
done
cat > "$tmp/vessel.yaml" <<'Y'
compute:
  from: {type: tar, url: '${{ROOTFS}}'}
  run: /bin/busybox dd if=/dev/zero bs=1M count=256 2>/dev/null | /bin/busybox sha256sum
spawn:
  from: {type: tar, url: '${{ROOTFS}}'}
  run: |
    i=0
    while [ $i -lt 1000 ]; do /bin/busybox true; i=$((i+1)); done
Y

median() { sort -n | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# step IMAGE < progress: seconds from "IMAGE: run" to "IMAGE: making the layer"
step() { awk -v img="$1" '
  { t=$2; gsub(/[\[\]s]/, "", t) }
  $0 ~ "\\] " img ": run$" { s=t }
  $0 ~ "\\] " img ": making the layer$" { printf "%.1f\n", t-s }'; }

declare -A res
for a in amd64 arm64; do
  for img in compute spawn; do res[$a-$img]=""; done
  for i in $(seq 1 "$runs"); do
    "$vessel" build -f "$tmp/vessel.yaml" --arch $a --substitute ROOTFS="$tmp/$a.tar" --no-cache >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
    for img in compute spawn; do res[$a-$img]+="$(step $img < "$tmp/err") "; done
  done
done
"$vessel" run --arch arm64 compute /bin/busybox uname -m | grep -qx aarch64 || { echo "the arm64 image does not run as aarch64" >&2; exit 1; }
printf '%-8s %10s %10s %8s\n' step native_s arm64_s ratio
for img in compute spawn; do
  n=$(printf '%s\n' ${res[amd64-$img]} | median)
  e=$(printf '%s\n' ${res[arm64-$img]} | median)
  awk -v img=$img -v n="$n" -v e="$e" 'BEGIN{printf "%-8s %10.1f %10.1f %7.1fx\n", img, n, e, (n>0 ? e/n : 0)}'
done
echo "(median of $runs; $(nproc) cores; qemu-user-static $(dpkg-query -W -f='${Version}' qemu-user-static))"
