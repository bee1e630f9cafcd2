#!/usr/bin/env bash
# bench/start-ab.sh: interleaved A/B of container start time on a loaded
# machine. Each round runs bare `runc run` once, then `vessel run --rm IMG
# /bin/true` with every given vessel binary, once with a run directory on
# disk and once on a tmpfs (each binary has run directories of its own, so
# one binary's warm layer mounts never serve another's runs). Prints the
# medians and the ratios to runc. The image and the runc bundle are made as
# in bench/run.sh (busybox-static rootfs, vessel's own config.json).
# Usage: N=40 bench/start-ab.sh OLD/vessel NEW/vessel   (root; runc, jq, busybox-static)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: N=40 $0 VESSEL_BINARY..." >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "start-ab.sh: needs root" >&2; exit 1; }
N=${N:-40}
tmp=$(mktemp -d /tmp/vessel-bench-ab.XXXXXX)
export VESSEL_ROOT=$tmp/root
cleanup() {
  set +e
  for d in "$tmp"/run* "$tmp"/tmpfs*; do [ -d "$d" ] && VESSEL_RUN=$d "$1" down >/dev/null 2>&1; done
  grep -F " $tmp/" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf --one-file-system "$tmp"
}
trap 'cleanup "$1"' EXIT
v=$1
mkdir -p "$tmp/rootfs/bin" "$tmp"/rootfs/{dev,proc,sys,tmp,etc,root,var}
cp /bin/busybox "$tmp/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$tmp/rootfs/bin/$a"; done
"$v" image create bench:1 --layer "$tmp/rootfs" >/dev/null 2>&1
VESSEL_RUN=$tmp/spec "$v" run --rm --name bench-spec bench:1 /bin/sleep 1 &
spid=$!
for _ in $(seq 200); do [ -s "$tmp/spec/containers/bench-spec/config.json" ] && break; sleep 0.01; done
cp "$tmp/spec/containers/bench-spec/config.json" "$tmp/config.json"
wait "$spid"
mkdir -p "$tmp/bundle" && cp -a "$tmp/rootfs" "$tmp/bundle/rootfs"
jq '.root.path = "rootfs" | .process.args = ["/bin/true"] | .hostname = "bench" | del(.linux.cgroupsPath)' \
  "$tmp/config.json" >"$tmp/bundle/config.json"
k=0
for b in "$@"; do
  k=$((k + 1))
  mkdir -p "$tmp/run$k" "$tmp/tmpfs$k"
  mount -t tmpfs -o mode=0700,size=64m vessel-bench-ab "$tmp/tmpfs$k"
done
us() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>"$tmp/err" || { echo "failed: $*" >&2; cat "$tmp/err" >&2; exit 1; }; e=$(date +%s%N); echo $(((e - s) / 1000)); }
runc_once() { runc --root "$tmp/runc-state" run --bundle "$tmp/bundle" "ab-$BASHPID-$SRANDOM"; }
declare -A T
for _ in $(seq "$N"); do
  T[runc]+="$(us runc_once) "
  k=0
  for b in "$@"; do
    k=$((k + 1))
    T[d$k]+="$(VESSEL_RUN=$tmp/run$k us "$b" run --rm bench:1 /bin/true) "
    T[t$k]+="$(VESSEL_RUN=$tmp/tmpfs$k us "$b" run --rm bench:1 /bin/true) "
  done
done
med() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1000}'; }
r=$(med "${T[runc]}")
echo "N=$N, load average $(cut -d' ' -f1-3 /proc/loadavg); runc run median $r ms"
k=0
for b in "$@"; do
  k=$((k + 1))
  d=$(med "${T[d$k]}") t=$(med "${T[t$k]}")
  echo "$b: disk run dir $d ms ($(awk -v a="$d" -v b="$r" 'BEGIN{printf "%.2f", a/b}')x), tmpfs run dir $t ms ($(awk -v a="$t" -v b="$r" 'BEGIN{printf "%.2f", a/b}')x)"
done
