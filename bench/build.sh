#!/usr/bin/env bash
# bench/build.sh: `vessel build` of examples/vessel.yaml (busybox base + app):
#   cold build (empty store), fully cached rebuild, and a rebuild after one
#   image (app) changed, as times and ratios to cold (target: cached < 5%);
#   and, in the same run, buildah building the same two images from
#   examples/Containerfile.base/.app cold, printed as vessel/buildah.
# Usage: bench/build.sh [RUNS]   (median of RUNS, default 3; run as root)
# buildah is a bench-only dependency: installed here if missing, not by make deps.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
[ "$(id -u)" -eq 0 ] || { echo "bench/build.sh: run as root (vessel build and buildah mount layers)" >&2; exit 1; }
if ! command -v buildah >/dev/null; then
  echo "bench/build.sh: installing buildah (bench only)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null
fi
tmp=$(mktemp -d /var/tmp/vessel-bench-build.XXXXXX)   # on disk, like a real store
trap 'rm -rf "$tmp"' EXIT INT TERM
(cd "$repo" && CGO_ENABLED=0 go build -o bin/vessel ./cmd/vessel)
vessel=$repo/bin/vessel
export SOURCE_DATE_EPOCH=1700000000

# the recipe in a copy, so that the app can be changed without touching the repo
mkdir -p "$tmp/recipe"
cp -r "$repo/examples/vessel.yaml" "$repo/examples/www" "$tmp/recipe/"
mkdir -p "$tmp/ctx" && cp /bin/busybox "$tmp/ctx/"

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
vb() { VESSEL_ROOT=$tmp/store VESSEL_RUN=$tmp/run "$vessel" build -f "$tmp/recipe/vessel.yaml" "$@" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }; }
timed() { local s e; s=$(now); "$@"; e=$(now); awk -v s="$s" -v e="$e" 'BEGIN{printf "%.4f\n", e-s}'; }

cold=() cached=() changed=()
for i in $(seq 1 "$runs"); do
  rm -rf "$tmp/store" "$tmp/run"
  echo "<h1>vessel example</h1>" > "$tmp/recipe/www/index.html"
  cold+=("$(timed vb)")
  cached+=("$(timed vb)")
  echo "<h1>changed $i</h1>" > "$tmp/recipe/www/index.html"
  changed+=("$(timed vb)")
done
grep -q '\] app: run' <(VESSEL_ROOT=$tmp/store VESSEL_RUN=$tmp/run "$vessel" build -f "$tmp/recipe/vessel.yaml" 2>&1) && { echo "cached rebuild ran a container" >&2; exit 1; }
t_cold=$(printf '%s\n' "${cold[@]}" | median)
t_cached=$(printf '%s\n' "${cached[@]}" | median)
t_changed=$(printf '%s\n' "${changed[@]}" | median)

# buildah: the same two images, cold (empty storage each run)
iso=oci
bh() { buildah --root "$tmp/broot" --runroot "$tmp/brun" --storage-driver overlay "$@"; }
bbuild() {
  bh build --isolation "$iso" -q -f "$repo/examples/Containerfile.base" -t vessel-example-base "$tmp/ctx" >/dev/null 2>"$tmp/berr" &&
  bh build --isolation "$iso" -q -f "$repo/examples/Containerfile.app" -t vessel-example-app "$tmp/recipe/www" >/dev/null 2>>"$tmp/berr"
}
bclean() { bh rm --all >/dev/null 2>&1 || true; bh rmi --all --force >/dev/null 2>&1 || true; rm -rf "$tmp/broot" "$tmp/brun"; }
bclean
if ! bbuild; then iso=chroot; bclean; bbuild || { cat "$tmp/berr" >&2; exit 1; }; fi
bclean
bcold=()
for i in $(seq 1 "$runs"); do
  s=$(now); bbuild || { cat "$tmp/berr" >&2; exit 1; }; e=$(now)
  bcold+=("$(awk -v s="$s" -v e="$e" 'BEGIN{printf "%.4f\n", e-s}')")
  bclean
done
t_bcold=$(printf '%s\n' "${bcold[@]}" | median)

awk -v c="$t_cold" -v k="$t_cached" -v h="$t_changed" -v b="$t_bcold" -v n="$runs" -v iso="$iso" 'BEGIN{
  printf "vessel build examples/vessel.yaml (2 images, median of %d)\n", n
  printf "  cold build:              %7.3f s\n", c
  printf "  fully cached rebuild:    %7.3f s   %5.1f%% of cold (target < 5%%)\n", k, 100*k/c
  printf "  app changed, rebuild:    %7.3f s   %5.1f%% of cold\n", h, 100*h/c
  printf "buildah build Containerfile.base + .app, cold (isolation %s): %7.3f s\n", iso, b
  printf "ratio vessel/buildah (cold): %.2fx (time)\n", c/b }'
