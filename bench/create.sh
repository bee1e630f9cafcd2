#!/usr/bin/env bash
# bench/create.sh: MB/s of `vessel image create` (mksquashfs + verity tree +
# digest + store commit) on a ~300 MB tree, against `mksquashfs` alone on the
# same tree in the same run, so the ratio shows what vessel adds on top.
# Usage: bench/create.sh [SIZE_MB]   (needs mksquashfs; run as root for owners)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
size_mb=${1:-300}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
(cd "$repo" && CGO_ENABLED=0 go build -o bin/vessel ./cmd/vessel)
vessel=$repo/bin/vessel

# a tree like a root filesystem: many small files plus some big ones, half
# compressible text, half random
echo "making a ${size_mb} MB tree in $tmp/tree..."
mkdir -p "$tmp/tree"
n=0
while [ $(( n * 4 )) -lt $(( size_mb / 2 )) ]; do
  d=$tmp/tree/dir$((n % 50)); mkdir -p "$d"
  head -c 4M /dev/urandom > "$d/random$n"
  n=$((n + 1))
done
for i in $(seq 1 2000); do
  d=$tmp/tree/text$((i % 100)); mkdir -p "$d"
  { yes "vessel layer benchmark line $i" || true; } | head -c $(( size_mb * 1024 * 1024 / 2 / 2000 )) > "$d/file$i"
done
bytes=$(du -sb "$tmp/tree" | cut -f1)
mb=$(awk -v b="$bytes" 'BEGIN{printf "%.1f", b/1e6}')
echo "tree: $mb MB, $(find "$tmp/tree" -type f | wc -l) files"

best() { # best wall time of 3 runs of "$@", in seconds
  local b=""
  for _ in 1 2 3; do
    local s e
    s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
    b=$(awk -v s="$s" -v e="$e" -v b="$b" 'BEGIN{t=e-s; if (b=="" || t<b) b=t; printf "%.3f", b}')
  done
  echo "$b"
}
mksq() { rm -f "$tmp/img"; mksquashfs "$tmp/tree" "$tmp/img" -noappend -quiet -no-progress -comp zstd; }
create() { rm -rf "$tmp/store"; VESSEL_ROOT=$tmp/store "$vessel" image create bench:1 --layer "$tmp/tree"; }
cat "$tmp"/tree/*/* > /dev/null # warm the page cache
t_mk=$(best mksq)
t_ve=$(best create)
awk -v mb="$mb" -v a="$t_ve" -v b="$t_mk" 'BEGIN{
  printf "mksquashfs alone:      %6.2f s  %7.1f MB/s\n", b, mb/b
  printf "vessel image create:   %6.2f s  %7.1f MB/s\n", a, mb/a
  printf "ratio vessel/mksquashfs: %.2fx (time)\n", a/b }'
