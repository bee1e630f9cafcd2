#!/usr/bin/env bash
# make demo: build a small product end to end on a throwaway local store.
#   two layers from a small tree (busybox-static + an app) -> a verified image
#   -> inspect -> verify -> vessel build of examples/vessel.yaml (base + app)
#   -> product keys -> signed system manifest -> verify it
#   -> vessel up: run its services from verified layers (web page, a worker
#   restarted on a fresh root filesystem) -> flip one byte in a layer and
#   watch verification name it, and the container refuse to start.
set -euo pipefail
cd "$(dirname "$0")/.."
vessel=$PWD/bin/vessel
work=$(mktemp -d /tmp/vessel-demo.XXXXXX)
export VESSEL_ROOT=$work/store VESSEL_RUN=$work/run SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
cleanup() {
  "$vessel" down >/dev/null 2>&1 || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

busybox=/bin/busybox
[ -x "$busybox" ] || { echo "demo: /bin/busybox is missing: install busybox-static (make deps does)" >&2; exit 1; }

say "two root filesystem trees"
mkdir -p "$work/base/bin" "$work/base/etc" "$work/app/srv/www" "$work/app/etc"
cp "$busybox" "$work/base/bin/busybox"
for t in sh ls cat httpd echo wc sleep date; do ln -s busybox "$work/base/bin/$t"; done
echo "ID=vessel-demo" > "$work/base/etc/os-release"
mkdir -p "$work/base/tmp"
echo "<h1>hello from a verified layer</h1>" > "$work/app/srv/www/index.html"
echo "welcome" > "$work/app/etc/motd"
find "$work/base" "$work/app" -printf '%y %p\n' | sed "s|$work/||" | head -20

say "create an image: one squashfs layer + dm-verity tree per directory"
run "$vessel" image create demo:1 --layer "$work/base" --layer "$work/app"
run "$vessel" images
run "$vessel" inspect demo:1

say "verify every blob digest and every block against its verity tree"
run "$vessel" image verify demo:1
json=$("$vessel" --json image verify demo:1)
layer1=$(printf '%s' "$json" | tr -d ' \n' | sed 's/.*"index":1,"digest":"sha256:\([0-9a-f]*\)","verityRootHash":"\([0-9a-f]*\)","dataBlocks":\([0-9]*\).*/\1 \2 \3/')
read -r layer1 root1 blocks1 <<<"$layer1"
blob=$VESSEL_ROOT/oci/blobs/sha256/$layer1
if command -v veritysetup >/dev/null; then
  say "cross-check layer 1 with veritysetup (an independent implementation)"
  run veritysetup verify "$blob" "$blob" "$root1" --data-blocks="$blocks1" --hash-offset=$((blocks1 * 4096)) && echo "veritysetup: layer 1 verified"
fi

say "the store is a standard OCI layout: skopeo reads it"
if command -v skopeo >/dev/null; then
  run skopeo inspect "oci:$VESSEL_ROOT/oci:demo:1" | head -12
fi

say "vessel build: the example product from a stacker-compatible recipe (examples/vessel.yaml)"
run "$vessel" build -f examples/vessel.yaml
echo "(again: nothing changed, so every image comes from the cache)"
run "$vessel" build -f examples/vessel.yaml
run "$vessel" images

say "product keys, a system manifest, signed and verified"
run "$vessel" keys init "$work/keys" --org "Vessel Demo"
pid=$("$vessel" keys product "$work/keys" --name demo-appliance | tail -1 | grep -o '[0-9a-f-]\{36\}')
cat > "$work/system.yaml" <<YAML
product: $pid
version: 1
services:
  - name: web
    image: app
    command: ["/bin/httpd", "-f", "-p", "127.0.0.1:${DEMO_PORT:-8080}", "-h", "/www"]
    network: host
    restart: always
  - name: worker
    image: base
    command: ["/bin/sh", "-c", "echo run >> /state/runs; echo \"run \$(wc -l < /state/runs): root fs has \$(ls /tmp 2>/dev/null | wc -l) files left from earlier runs\"; echo x > /tmp/scratch; sleep 2; exit 1"]
    restart: on-failure
    volumes: ["state:/state"]
YAML
run "$vessel" manifest build "$work/system.yaml" -o "$work/manifest.json"
run "$vessel" manifest sign "$work/manifest.json" --key "$work/keys/products/demo-appliance/product.key" \
  --cert "$work/keys/products/demo-appliance/product.pem" -o "$work/manifest.signed"
run "$vessel" manifest verify "$work/manifest.signed" --ca "$work/keys/manifest-ca.pem" --product-id "$pid" --images

say "vessel up: every service runs from a fresh, verified root filesystem"
run "$vessel" runtime
run "$vessel" up "$work/manifest.signed" --ca "$work/keys/manifest-ca.pem" --product-id "$pid" --detach --stop-timeout 2s
run "$vessel" ps
for _ in $(seq 50); do page=$(wget -qO- "http://127.0.0.1:${DEMO_PORT:-8080}/" 2>/dev/null) && break; sleep 0.1; done
printf '$ wget -qO- http://127.0.0.1:%s/\n%s\n' "${DEMO_PORT:-8080}" "$page"
case $page in *"vessel-built image"*) ;; *) echo "demo: the web service did not answer" >&2; exit 1 ;; esac
sleep 5
echo "(the worker exits 1 on purpose: it is restarted with backoff, its volume kept, its root fs fresh)"
run "$vessel" logs worker
run "$vessel" restart web
run "$vessel" ps
run "$vessel" down

say "tamper: flip one byte inside layer 1 and verify again"
printf 'X' | dd of="$blob" bs=1 seek=8192 conv=notrunc 2>/dev/null
if "$vessel" image verify demo:1; then
  echo "demo: tampering was NOT detected" >&2; exit 1
fi
run "$vessel" verity verify "$blob" "$blob" "$root1" --hash-offset=$((blocks1 * 4096)) || true
if command -v veritysetup >/dev/null; then
  run veritysetup verify "$blob" "$blob" "$root1" --data-blocks="$blocks1" --hash-offset=$((blocks1 * 4096)) || true
fi
say "a tampered layer is never mounted: the container does not start"
if "$vessel" run demo:1 /bin/echo "this must not print"; then
  echo "demo: a tampered layer was mounted" >&2; exit 1
fi
if grep -q "$VESSEL_RUN" /proc/self/mountinfo; then
  echo "demo: mounts left behind" >&2; exit 1
fi
say "tampering detected, nothing left mounted: the demo is complete"
