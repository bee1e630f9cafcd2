#!/usr/bin/env bash
# bench/run.sh: container start time. In one run, median of N each:
#   1. `vessel run --rm IMG /bin/true` on a busybox-static image (one squashfs
#      layer), verification cached (one warm-up run first);
#   2. bare `runc run` of an already-extracted bundle of the same rootfs with
#      the config.json vessel itself writes (same namespaces, caps, mounts,
#      rlimits), a fresh container id per run;
#   3. `podman run --rm --network none` of the same rootfs imported as a
#      normal tar-layer image (podman cannot use squashfs layers);
# and prints vessel/runc (target <= 1.3, issue 12) and vessel/podman (target <= 0.5).
# Then: start time of images with 1, 8 and 32 layers, and the cost of
# first-time userspace verification per GB (one ~512 MB random layer, empty
# verify cache vs cached), next to `vessel verity verify` and
# `veritysetup verify` on the same blob. vessel is also timed with its run
# directory on a tmpfs, as /run normally is (on this host /run is ext4).
# Usage: N=20 BIG_MB=512 bench/run.sh   (root; runc, mksquashfs, busybox-static,
# jq, veritysetup; installs podman with apt-get if missing unless
# BENCH_NO_INSTALL=1; podman is a bench-only dependency, not in scripts/deps.sh)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-20}
BIG_MB=${BIG_MB:-512}
[ "$(id -u)" -eq 0 ] || { echo "run.sh: needs root (loop, squashfs and overlay mounts)" >&2; exit 1; }
for tool in runc mksquashfs jq veritysetup; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is not installed (make deps)" >&2; exit 1; }
done
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 ||
  { echo "run.sh: needs a static /bin/busybox (apt-get install busybox-static)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/vessel-bench-run.XXXXXX)
export VESSEL_ROOT=$tmp/root VESSEL_RUN=$tmp/run
runc_state=$tmp/runc-state
pm=() # podman with its own storage under $tmp, set once podman is found
leaks=""
cleanup() {
  set +e
  # containers: runc's, then podman's (its storage is ours alone)
  if [ -d "$runc_state" ]; then
    for id in $(runc --root "$runc_state" list -q 2>/dev/null); do runc --root "$runc_state" delete --force "$id"; done
  fi
  if [ ${#pm[@]} -gt 0 ]; then
    "${pm[@]}" rm -af >/dev/null 2>&1
    "${pm[@]}" rmi -af >/dev/null 2>&1
  fi
  # anything still mounted under $tmp (only after a failure: a clean run
  # has already checked there is nothing), deepest first, before rm -rf
  grep -F " $tmp/" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

(cd "$repo" && CGO_ENABLED=0 go build -o bin/vessel ./cmd/vessel)
vessel=$repo/bin/vessel

# wall milliseconds of one run of "$@" (output discarded, failure is fatal)
ms() {
  local s e
  s=$(date +%s%N)
  "$@" >/dev/null 2>"$tmp/err" || { echo "run.sh: failed: $*" >&2; cat "$tmp/err" >&2; exit 1; }
  e=$(date +%s%N)
  echo $(( (e - s) / 1000 ))
}
# median (ms, 1 decimal) of $1 runs of "${@:2}"
median_of() {
  local n=$1 t=()
  shift
  for _ in $(seq "$n"); do t+=("$(ms "$@")"); done
  printf '%s\n' "${t[@]}" | sort -n | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1000}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }

# the busybox rootfs: /bin/busybox, its applets as symlinks, the usual dirs
rootfs=$tmp/rootfs
mkdir -p "$rootfs/bin" "$rootfs"/{dev,proc,sys,tmp,etc,root,var}
cp /bin/busybox "$rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"; done
"$vessel" image create bench:1 --layer "$rootfs" >/dev/null 2>&1
echo "image: busybox-static $(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || true), $(find "$rootfs" | wc -l) entries, N=$N, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. vessel run, verification cached after the warm-up
"$vessel" run --rm bench:1 /bin/true
rt=$("$vessel" runtime | awk '/^using/{print $2}')
t_vessel=$(median_of "$N" "$vessel" run --rm bench:1 /bin/true)

# 1b. the same with the run directory on tmpfs, as /run normally is (on
# this host /run is a disk filesystem: every mkdir, fsync and the overlay's
# upper layer hit ext4)
run_fs=$(stat -f -c %T /run)
mkdir -p "$tmp/run-tmpfs"
mount -t tmpfs -o mode=0700,size=256m vessel-bench "$tmp/run-tmpfs"
export VESSEL_RUN=$tmp/run-tmpfs
"$vessel" run --rm bench:1 /bin/true
t_vessel_tmpfs=$(median_of "$N" "$vessel" run --rm bench:1 /bin/true)
export VESSEL_RUN=$tmp/run

# 2. bare runc on an extracted bundle, with the config vessel writes: catch
# it from a running container, then point it at the plain rootfs directory.
"$vessel" run --rm --name bench-spec bench:1 /bin/sleep 1 &
spid=$!
for _ in $(seq 200); do [ -s "$VESSEL_RUN/containers/bench-spec/config.json" ] && break; sleep 0.01; done
cp "$VESSEL_RUN/containers/bench-spec/config.json" "$tmp/vessel-config.json"
wait "$spid"
mkdir -p "$tmp/bundle"
cp -a "$rootfs" "$tmp/bundle/rootfs"
jq '.root.path = "rootfs" | .process.args = ["/bin/true"] | .hostname = "bench" | del(.linux.cgroupsPath)' \
  "$tmp/vessel-config.json" >"$tmp/bundle/config.json"
# a fresh id each run (builtins only: median_of runs each in a subshell)
runc_once() { runc --root "$runc_state" run --bundle "$tmp/bundle" "bench-$BASHPID-$SRANDOM"; }
runc_once # warm-up
t_runc=$(median_of "$N" runc_once)
[ -z "$(runc --root "$runc_state" list -q)" ] || { echo "run.sh: runc left containers behind" >&2; exit 1; }

# 3. podman, same rootfs as a tar-layer image, own storage under $tmp
podman_note=""
if ! command -v podman >/dev/null; then
  if [ "${BENCH_NO_INSTALL:-0}" != 1 ]; then
    echo "podman not installed: apt-get install -y podman (bench only)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman; } >"$tmp/apt.log" 2>&1 ||
      { podman_note="apt-get install podman failed: $(tail -1 "$tmp/apt.log")"; }
  else
    podman_note="podman not installed and BENCH_NO_INSTALL=1"
  fi
fi
t_podman=""
if command -v podman >/dev/null; then
  pm=(podman --root "$tmp/podman/root" --runroot "$tmp/podman/runroot" --tmpdir "$tmp/podman/tmp")
  tar -C "$rootfs" -c . | "${pm[@]}" import - busybox-bench >/dev/null 2>"$tmp/err" ||
    { echo "run.sh: podman import failed:" >&2; cat "$tmp/err" >&2; exit 1; }
  # Try podman's defaults first, then what this host needs: crun refuses
  # hybrid cgroups, and without CAP_SYS_RESOURCE podman's default rlimits
  # (nofile 1048576, nproc = the caller's) fail with EPERM. vessel's spec
  # sets nofile 1024 too.
  lim="--ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
  for try in "|" "--runtime runc|" "--runtime runc --cgroup-manager cgroupfs|" "--runtime runc --cgroup-manager cgroupfs|$lim"; do
    g=${try%|*} r=${try#*|}
    # shellcheck disable=SC2086 # word splitting of the option lists is intended
    if "${pm[@]}" $g run --rm --network none $r busybox-bench /bin/true >/dev/null 2>"$tmp/err"; then
      pm+=($g) podman_run=($r) podman_ok=1
      podman_note="podman $(podman --version | awk '{print $3}') needed: ${g:-(nothing)} ${r}"
      break
    fi
    echo "podman ${g:-(defaults)} ${r}: $(tail -1 "$tmp/err")"
  done
  if [ -n "${podman_ok:-}" ]; then
    t_podman=$(median_of "$N" "${pm[@]}" run --rm --network none "${podman_run[@]}" busybox-bench /bin/true)
  else
    podman_note="podman cannot run a container here (errors above); column skipped"
  fi
fi

echo
echo "start of /bin/true, median of $N (ms):"
printf '  vessel run --rm (%s, verify cached): %7.1f\n' "$rt" "$t_vessel"
printf '  runc run, extracted bundle:           %7.1f\n' "$t_runc"
if [ -n "$t_podman" ]; then
  printf '  podman run --rm --network none:       %7.1f\n' "$t_podman"
else
  printf '  podman run:                           skipped\n'
fi
printf '  vessel run --rm, VESSEL_RUN on tmpfs:  %7.1f  (this host'"'"'s /run is %s, not tmpfs)\n' "$t_vessel_tmpfs" "$run_fs"
printf 'ratio vessel/runc:   %s with VESSEL_RUN on %s, %s on tmpfs (the default: vessel mounts a tmpfs on /run/vessel when /run is not one) (target <= 1.3, issue 12)\n' \
  "$(ratio "$t_vessel" "$t_runc")" "$run_fs" "$(ratio "$t_vessel_tmpfs" "$t_runc")"
if [ -n "$t_podman" ]; then
  printf 'ratio vessel/podman: %s (target <= 0.5)\n' "$(ratio "$t_vessel" "$t_podman")"
else
  printf 'ratio vessel/podman: n/a\n'
fi
echo "notes: runc runs vessel's own config.json (pid ipc uts mount network namespaces, same caps,"
echo "  mounts, masked paths, rlimits) without cgroupsPath (runc's default, named after the id),"
echo "  on a plain rootfs directory: no overlay, no layer mount, no --log. $podman_note"

# 4. start time against the number of layers (base + N-1 tiny layers)
mkdir -p "$tmp/tiny"
layers=(--layer "$rootfs")
for i in $(seq 2 32); do
  mkdir -p "$tmp/tiny/l$i"
  echo "layer $i" >"$tmp/tiny/l$i/file$i"
done
echo
echo "vessel run --rm IMG /bin/true by number of layers, verify cached, median of $N (ms):"
echo "  layers  VESSEL_RUN on $(stat -f -c %T "$tmp")  on tmpfs"
for n in 1 8 32; do
  args=(--layer "$rootfs")
  for i in $(seq 2 "$n"); do args+=(--layer "$tmp/tiny/l$i"); done
  "$vessel" image create "layers:$n" "${args[@]}" >/dev/null 2>&1
  "$vessel" run --rm "layers:$n" /bin/true # warm-up: verifies and caches
  VESSEL_RUN=$tmp/run-tmpfs "$vessel" run --rm "layers:$n" /bin/true
  printf '  %6d  %12.1f  %9.1f\n' "$n" "$(median_of "$N" "$vessel" run --rm "layers:$n" /bin/true)" \
    "$(VESSEL_RUN=$tmp/run-tmpfs median_of "$N" "$vessel" run --rm "layers:$n" /bin/true)"
done

# 5. first-time userspace verification: one layer = the busybox rootfs plus
# BIG_MB of random data (incompressible: the squashfs stays that big)
cp -a "$rootfs" "$tmp/big"
head -c $((BIG_MB << 20)) /dev/urandom >"$tmp/big/random"
"$vessel" image create big:1 --layer "$tmp/big" >/dev/null 2>&1
rm -rf "$tmp/big"
sync # no writeback of the new blob during the timings
blob=$("$vessel" inspect big:1 --json | jq -r '.layers[0].digest | sub(":"; "/")')
blob=$VESSEL_ROOT/oci/blobs/$blob
root_hash=$("$vessel" inspect big:1 --json | jq -r '.layers[0].verityRootHash')
bytes=$(stat -c %s "$blob")
fs_size=$(od -An -tu8 -j40 -N8 "$blob" | tr -d ' ') # squashfs bytes_used
data_size=$(( (fs_size + 4095) / 4096 * 4096 ))
cat "$blob" >/dev/null # page cache warm for every variant below
# (vessel down first: a warm layer mount would be shared, not verified)
uncached() { "$vessel" down >/dev/null; rm -rf "$VESSEL_RUN/verified"; "$vessel" run --rm big:1 /bin/true; }
t_first=$(median_of 3 uncached)
t_cached=$(median_of "$N" "$vessel" run --rm big:1 /bin/true)
t_vv=$(median_of 3 "$vessel" verity verify --data-blocks $((data_size / 4096)) --hash-offset "$data_size" "$blob" "$blob" "$root_hash")
t_vs=$(median_of 3 veritysetup verify --data-blocks=$((data_size / 4096)) --hash-offset="$data_size" "$blob" "$blob" "$root_hash")
echo
awk -v b="$bytes" -v f="$t_first" -v c="$t_cached" -v vv="$t_vv" -v vs="$t_vs" -v n="$N" 'BEGIN{
  gb = b / 1e9
  printf "first-time verification, one %.0f MB layer (page cache warm):\n", b / 1e6
  printf "  vessel run, empty verify cache (median of 3): %8.1f ms\n", f
  printf "  vessel run, cached (median of %d):            %8.1f ms\n", n, c
  printf "  first-time cost: %.2f s/GB (%.0f MB/s)\n", (f - c) / 1000 / gb, b / 1e3 / (f - c)
  printf "  vessel verity verify on the blob:             %8.1f ms = %.2f s/GB\n", vv, vv / 1000 / gb
  printf "  veritysetup verify on the blob:               %8.1f ms = %.2f s/GB\n", vs, vs / 1000 / gb
}'

# Warm layer mounts (kept a minute for the next start) are cache, recorded
# as such: vessel down takes them down. After that nothing of vessel's may
# stay mounted or attached.
for r in "$VESSEL_RUN" "$tmp/run-tmpfs"; do
  ls "$r/refs" 2>/dev/null | grep -q '\.@warm$' || { echo "run.sh: no warm layer mount recorded in $r" >&2; exit 1; }
  VESSEL_RUN=$r "$vessel" down >/dev/null
done
leaks=$(grep -F -e "$VESSEL_RUN/" -e "$tmp/run-tmpfs/" /proc/self/mountinfo || true)
loops=$(losetup -a 2>/dev/null | grep -F "$tmp/" || true)
if [ -n "$leaks$loops" ]; then
  echo "run.sh: FAIL: mounts or loop devices left under $VESSEL_RUN:" >&2
  printf '%s\n' "$leaks" "$loops" >&2
  exit 1
fi
umount "$tmp/run-tmpfs"
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "no mounts or loop devices left under $VESSEL_RUN (nor $tmp/run-tmpfs)"
