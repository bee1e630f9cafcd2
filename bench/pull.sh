#!/usr/bin/env bash
# bench/pull.sh: `vessel pull` against `skopeo copy docker://... oci:DIR` from
# the same loopback docker-registry in the same run. The image has 8 layers
# of random (incompressible) data, ~500 MB in total. Each tool gets a fresh
# destination for each of 3 runs, alternating; the median is reported with
# MB/s and the ratio vessel/skopeo (target <= 1.0).
# Usage: bench/pull.sh [TOTAL_MB]   (root; docker-registry, skopeo, mksquashfs)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
total_mb=${1:-500}
for tool in docker-registry skopeo mksquashfs; do
  command -v "$tool" >/dev/null || { echo "pull.sh: $tool is not installed (make deps)" >&2; exit 1; }
done
tmp=$(mktemp -d /tmp/vessel-bench-pull.XXXXXX)
regpid=""
cleanup() { [ -n "$regpid" ] && kill "$regpid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT INT TERM
(cd "$repo" && CGO_ENABLED=0 go build -o bin/vessel ./cmd/vessel)
vessel=$repo/bin/vessel

# a loopback registry on a free port
port=$(( 20000 + RANDOM % 20000 ))
while (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; do port=$(( port + 1 )); done
cat > "$tmp/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $tmp/registry}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$tmp/registry.yml" >"$tmp/registry.log" 2>&1 &
regpid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
ref=docker://127.0.0.1:$port/bench/pull:1

echo "making an image of 8 layers, ${total_mb} MB of random data..."
layers=()
for i in $(seq 1 8); do
  mkdir -p "$tmp/l$i"
  head -c $(( total_mb * 1024 * 1024 / 8 )) /dev/urandom > "$tmp/l$i/data"
  layers+=(--layer "$tmp/l$i")
done
VESSEL_ROOT=$tmp/src "$vessel" image create bench:1 "${layers[@]}" >/dev/null 2>&1
VESSEL_ROOT=$tmp/src "$vessel" push bench:1 "$ref" --plain-http >/dev/null
rm -rf "$tmp"/l*

timed() { # wall seconds of "$@"
  local s e
  s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" 'BEGIN{printf "%.3f", e-s}'
}
v_times=(); s_times=()
for run in 1 2 3; do
  rm -rf "$tmp/v" "$tmp/s"
  v_times+=("$(VESSEL_ROOT=$tmp/v timed "$vessel" pull "$ref" bench:1 --plain-http)")
  s_times+=("$(timed skopeo copy -q --src-tls-verify=false "$ref" "oci:$tmp/s:1")")
  # both destinations hold the same manifest digest
  vd=$(VESSEL_ROOT=$tmp/v "$vessel" inspect bench:1 --json | grep -m1 -o 'sha256:[0-9a-f]*')
  sd=$(grep -o 'sha256:[0-9a-f]*' "$tmp/s/index.json")
  [ "$vd" = "$sd" ] || { echo "pull.sh: digests differ: vessel $vd, skopeo $sd" >&2; exit 1; }
done
bytes=$(du -sb "$tmp/s/blobs" | cut -f1)
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
vm=$(median "${v_times[@]}"); sm=$(median "${s_times[@]}")
awk -v b="$bytes" -v v="$vm" -v s="$sm" -v vr="${v_times[*]}" -v sr="${s_times[*]}" 'BEGIN{
  printf "image: 8 layers, %.1f MB\n", b/1e6
  printf "vessel pull:          %6.2f s  %7.1f MB/s  (runs: %s)\n", v, b/1e6/v, vr
  printf "skopeo copy oci:DIR:  %6.2f s  %7.1f MB/s  (runs: %s)\n", s, b/1e6/s, sr
  printf "ratio vessel/skopeo:  %.2f (target <= 1.0)\n", v/s
}'
