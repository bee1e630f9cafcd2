#!/usr/bin/env bash
# make vm-demo: build the bootable example product (examples/boot) and boot it
# in a Secure Boot VM, end to end, on a throwaway store:
#   keys (manifest CA + product, UEFI PK/KEK/db) -> vessel build (host image:
#   busybox + vessel + runc; service images) -> signed system manifest ->
#   initrd (vessel as /init, the CA, the product ID) -> signed UKI -> OVMF
#   variables enforcing the db key -> vessel boot disk -> qemu (TCG, OVMF
#   Secure Boot, swtpm) -> the web service answers through hostfwd on
#   127.0.0.1 -> the ACPI power button (qemu system_powerdown): the host's
#   init stops the services and powers the machine off cleanly.
# Environment: VM_DEMO_TIMEOUT (seconds for the whole VM part, default 600),
# VM_DEMO_KEEP=1 keeps the work directory, VM_DEMO_MEM (MiB, default 768).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
vessel=$repo/bin/vessel
timeout_s=${VM_DEMO_TIMEOUT:-600}
start=$SECONDS

say() { printf '\n\033[1m== %s\033[0m  (%ds)\n' "$*" $((SECONDS - start)); }
run() { printf '$ %s\n' "$*"; "$@"; }
die() { echo "vm-demo: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (vessel build runs containers; make deps installs what it needs)"
[ -x "$vessel" ] || die "$vessel is missing: make build"
file "$vessel" 2>/dev/null | grep -q 'statically linked' || ldd "$vessel" 2>&1 | grep -q 'not a dynamic' || die "$vessel is not static: make build (CGO_ENABLED=0)"
code=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd
for f in /usr/bin/qemu-system-x86_64 /usr/bin/swtpm "$code" /usr/share/OVMF/OVMF_VARS_4M.fd \
  /usr/lib/systemd/boot/efi/linuxx64.efi.stub /bin/busybox; do
  [ -e "$f" ] || die "missing $f (make deps)"
done
for t in runc mksquashfs mkfs.ext4 mkfs.vfat mcopy curl; do command -v "$t" >/dev/null || die "missing $t (make deps)"; done
kernel=
for k in $(ls -r /boot/vmlinuz-* 2>/dev/null); do
  if [ -d "/lib/modules/${k#/boot/vmlinuz-}" ]; then kernel=$k; break; fi
done
[ -n "$kernel" ] || die "no /boot/vmlinuz-* with its /lib/modules tree (make deps installs linux-image-amd64)"
modules=/lib/modules/${kernel#/boot/vmlinuz-}

work=$(mktemp -d /tmp/vessel-vm-demo.XXXXXX)
export VESSEL_ROOT=$work/store VESSEL_RUN=$work/run SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
qemu_pid= swtpm_pid= tail_pid=
cleanup() {
  # Only what this script started, by PID.
  for p in $tail_pid $qemu_pid $swtpm_pid; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in $qemu_pid $swtpm_pid; do kill -9 "$p" 2>/dev/null || true; done
  if [ "${VM_DEMO_KEEP:-}" = 1 ]; then echo "vm-demo: kept $work"; else rm -rf --one-file-system "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$work"

say "keys: a manifest CA with a product key, and a UEFI Secure Boot set (PK, KEK, db)"
run "$vessel" keys init keys --org "Vessel VM Demo" >/dev/null
pid=$("$vessel" keys product keys --name vessel-demo | tail -1 | grep -o '[0-9a-f-]\{36\}')
echo "product ID $pid"
run "$vessel" keys uefi sb --org "Vessel VM Demo" >/dev/null
ls sb

say "vessel build: examples/boot/vessel.yaml (base, host = busybox + vessel as /sbin/init + runc, web)"
# runc (the supervisor's OCI runtime) and the libraries ldd names, as one tar.
libs=$(ldd "$(command -v runc)" | grep -o '/[^ ]*\.so[.0-9]*' | sort -u)
tar -C / -chf runc.tar "$(command -v runc | sed 's|^/||')" $(printf '%s\n' $libs | sed 's|^/||')
tar -tvf runc.tar
run "$vessel" build -f "$repo/examples/boot/vessel.yaml" --substitute "VESSEL=$vessel" --substitute "RUNC_TAR=$work/runc.tar"
run "$vessel" images

say "system manifest: examples/boot/system.yaml, built, signed with the product key, verified"
run "$vessel" manifest build "$repo/examples/boot/system.yaml" --keys keys -o manifest.json
run "$vessel" manifest sign manifest.json --key keys/products/vessel-demo/product.key --cert keys/products/vessel-demo/product.pem -o manifest.signed
run "$vessel" manifest verify manifest.signed --ca keys/manifest-ca.pem --product-id "$pid" --images

say "initrd, UKI signed with the db key, OVMF variables enforcing the key set, disk"
run "$vessel" boot initrd --ca keys/manifest-ca.pem --product-id "$pid" --modules "$modules" -o initrd.img
run "$vessel" boot uki --kernel "$kernel" --initrd initrd.img --cmdline "console=ttyS0 vessel.ip=10.0.2.15/24" \
  --key sb/db.key --cert sb/db.crt -o vessel.efi
run "$vessel" boot vars --keys sb -o VARS.fd
run "$vessel" boot disk --manifest manifest.signed --uki vessel.efi --ca keys/manifest-ca.pem --product-id "$pid" --size 512M -o disk.img

# A free port on 127.0.0.1 (nothing answers on it now).
free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  die "no free port found"
}
web_port=$(free_port)
boots_port=$(free_port)

say "boot: qemu TCG, OVMF Secure Boot, swtpm; 127.0.0.1:$web_port -> web:8080, 127.0.0.1:$boots_port -> boots:8081"
mkdir tpm
swtpm socket --tpm2 --tpmstate "dir=$work/tpm" --ctrl "type=unixio,path=$work/tpm/sock" --daemon --pid "file=$work/tpm/pid" --log "file=$work/tpm/log"
for _ in $(seq 50); do [ -s tpm/pid ] && [ -S tpm/sock ] && break; sleep 0.1; done
swtpm_pid=$(cat tpm/pid)
mkfifo mon.in mon.out
: >serial.log
qemu=(qemu-system-x86_64 -accel tcg -machine q35,smm=on -m "${VM_DEMO_MEM:-768}"
  -global driver=cfi.pflash01,property=secure,value=on -global ICH9-LPC.disable_s3=1
  -drive "if=pflash,format=raw,unit=0,readonly=on,file=$code" -drive "if=pflash,format=raw,unit=1,file=$work/VARS.fd"
  -drive "file=$work/disk.img,format=raw,if=virtio"
  -chardev "socket,id=chrtpm,path=$work/tpm/sock" -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0
  -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$web_port-:8080,hostfwd=tcp:127.0.0.1:$boots_port-:8081"
  -device virtio-net-pci,netdev=n0
  -serial "file:$work/serial.log" -display none -monitor "pipe:$work/mon" -no-reboot
  -pidfile "$work/qemu.pid" -daemonize)
echo "\$ ${qemu[*]}"
"${qemu[@]}"
qemu_pid=$(cat qemu.pid)
boot_at=$SECONDS
deadline=$((SECONDS + timeout_s))
# vessel's own console lines, as they come.
tail -n +1 -f serial.log | grep --line-buffered -a -E '^(vessel-|.*verity|.*Access Denied)' &
tail_pid=$(jobs -p | tail -1)
alive() { kill -0 "$qemu_pid" 2>/dev/null; }

page=
while [ $SECONDS -lt $deadline ]; do
  alive || die "qemu exited before the service answered (serial log above)"
  grep -aq 'FAILED' serial.log && { sleep 1; die "the boot failed (serial log above)"; }
  grep -aq 'Access Denied' serial.log && die "the firmware refused the UKI (Secure Boot: Access Denied)"
  if page=$(curl -fsS --max-time 5 "http://127.0.0.1:$web_port/index.html" 2>/dev/null); then break; fi
  sleep 1
done
[ -n "$page" ] || die "no answer from the web service in ${timeout_s}s"
answered=$((SECONDS - boot_at))
sleep 0.5
say "the web service answers through hostfwd, ${answered}s after qemu started"
run curl -fsS "http://127.0.0.1:$web_port/index.html"
run curl -fsS "http://127.0.0.1:$boots_port/boots.txt"

say "clean power-off: the ACPI power button (the host's init stops the services, leaves the data partition clean)"
echo "system_powerdown" >mon.in
while alive && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
alive && die "the guest did not go down by the deadline"
qemu_pid=
sleep 0.3
kill "$tail_pid" 2>/dev/null || true
tail_pid=
grep -aq 'vessel-host: data partition clean (read-only)' serial.log || die "no clean shutdown line in the serial log"
grep -aq 'vessel-host: powering off' serial.log || die "the guest went down without powering off"
say "done: the web service answered ${answered}s after qemu started; the whole demo took $((SECONDS - start))s"
echo "timings from the console (uptime is guest seconds since the kernel started):"
grep -a -E 'vessel-init: (started|switch_root)|vessel-host: (up|services up)' serial.log | sed 's/^/  /'
