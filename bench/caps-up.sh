#!/usr/bin/env bash
# bench/caps-up.sh: the cost of vessel up --why-denied. Times `vessel up
# --detach` (returns once every service has started) of a manifest with 3
# services, without and with --why-denied, interleaved N times, and prints
# each and the medians. --why-denied makes a cgroup and loads the BPF
# program once per service start.
# Usage: N=10 bench/caps-up.sh   (root; runc, mksquashfs, busybox-static)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-10}
[ "$(id -u)" -eq 0 ] || { echo "caps-up.sh: needs root (BPF, containers)" >&2; exit 1; }
D=$(mktemp -d /tmp/vessel-caps-up.XXXXXX)
export VESSEL_ROOT=$D/store VESSEL_RUN=$D/run
V=$D/vessel
trap '"$V" down >/dev/null 2>&1 || true; rm -rf "$D"' EXIT
(cd "$repo" && go build -o "$V" ./cmd/vessel)
cd "$D"
mkdir -p base/bin; cp "$(command -v busybox)" base/bin/; for t in sh sleep; do ln -s busybox base/bin/$t; done
"$V" image create bb:1 --layer base >/dev/null 2>&1
"$V" keys init keys --org Bench >/dev/null; "$V" keys product keys --name demo >/dev/null 2>&1
printf 'product: demo\nversion: 1\nservices:\n' > system.yaml
for s in a b c; do printf '  - {name: %s, image: bb:1, command: [/bin/sleep, "600"]}\n' $s >> system.yaml; done
"$V" manifest build system.yaml --keys keys -o m.json >/dev/null
"$V" manifest sign m.json --key keys/products/demo/product.key --cert keys/products/demo/product.pem -o m.signed >/dev/null
plain=() watched=()
for _ in $(seq "$N"); do
  for f in "" --why-denied; do
    s=$(date +%s%N)
    "$V" up m.signed --ca keys/manifest-ca.pem --detach --stop-timeout 1s $f >/dev/null
    ms=$(( ($(date +%s%N) - s) / 1000000 ))
    "$V" down >/dev/null
    if [ -z "$f" ]; then plain+=("$ms"); else watched+=("$ms"); fi
  done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "up, 3 services:              ${plain[*]} ms; median $(median "${plain[@]}") ms"
echo "up --why-denied, 3 services: ${watched[*]} ms; median $(median "${watched[@]}") ms"
