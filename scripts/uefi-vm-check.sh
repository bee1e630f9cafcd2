#!/usr/bin/env bash
# Manual end-to-end check of vessel's Secure Boot artifacts under OVMF (qemu TCG),
# no TPM, about 1-2 minutes. Not part of `make test` (the VM harness of the boot
# tests is internal/vmtest's); run it after changing internal/boot/{secureboot,ovmf,uki}:
#
#   scripts/uefi-vm-check.sh [bin/vessel]
#
# Boots, each watched on the serial console and killed by PID:
#   1. VARS from `vessel boot vars`: a UKI signed with db boots with Secure Boot on;
#   2. the same VARS: a UKI signed with KEK (not in db) is refused ("Access Denied");
#   3. the same VARS: an unsigned UKI is refused;
#   4. an empty VARS (setup mode): a busybox initrd writes db.auth, KEK.auth, PK.auth
#      through efivarfs and SetupMode goes 1 -> 0;
#   5. that VARS: the db-signed UKI boots with Secure Boot on.
# Needs: qemu-system-x86, ovmf, systemd-boot-efi, linux-image-amd64, busybox-static,
# sbsigntool (sbattach), cpio.
set -euo pipefail
VESSEL=$(realpath "${1:-bin/vessel}")
KVER=$(ls /lib/modules | sort -V | tail -n1)
KERNEL=/boot/vmlinuz-$KVER
CODE=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd
TEMPLATE=/usr/share/OVMF/OVMF_VARS_4M.fd
for f in "$VESSEL" "$KERNEL" "$CODE" "$TEMPLATE" /bin/busybox; do
  [ -e "$f" ] || { echo "uefi-vm-check: missing $f" >&2; exit 2; }
done
W=$(mktemp -d)
QPID=
cleanup() { [ -n "$QPID" ] && kill "$QPID" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT INT TERM

# boot VARS ESPDIR LOG PATTERN: start qemu, wait (at most 150 s) for PATTERN on the
# serial log, kill qemu by PID. Prints the first matching line.
boot() {
  timeout 180 qemu-system-x86_64 -accel tcg -machine q35,smm=on -m 512 \
    -global driver=cfi.pflash01,property=secure,value=on -global ICH9-LPC.disable_s3=1 \
    -drive if=pflash,format=raw,unit=0,readonly=on,file=$CODE -drive if=pflash,format=raw,unit=1,file="$1" \
    -drive file=fat:rw:"$2",format=raw,if=virtio -serial file:"$3" -display none -monitor none \
    -no-reboot -nic none >/dev/null 2>&1 &
  QPID=$!
  for _ in $(seq 1 150); do
    if grep -aqE "$4" "$3" 2>/dev/null || ! kill -0 "$QPID" 2>/dev/null; then break; fi
    sleep 1
  done
  kill "$QPID" 2>/dev/null || true
  wait "$QPID" 2>/dev/null || true
  QPID=
  grep -aoE "$4" "$3" | head -n1 || true
}
expect() { # expect WHAT GOT WANT
  if [ "$2" = "$3" ]; then echo "ok   $1: $2"; else echo "FAIL $1: got '$2', want '$3'"; FAILED=1; fi
}
FAILED=0
DONE='Kernel panic|Access Denied|VESSEL-ENROLL-DONE'

cd "$W"
"$VESSEL" keys uefi sb --org "VM Check" >/dev/null
"$VESSEL" boot vars --keys sb -o VARS.fd >/dev/null
mkdir -p tiny/etc && echo hi >tiny/etc/hello && (cd tiny && find . | cpio --quiet -o -H newc) >tiny.cpio
for e in signed kek unsigned enroll; do mkdir -p esp-$e/EFI/BOOT; done
uki() { "$VESSEL" boot uki --kernel "$KERNEL" --cmdline "console=ttyS0 panic=-1" "$@" >/dev/null; }
uki --initrd tiny.cpio --key sb/db.key --cert sb/db.crt -o esp-signed/EFI/BOOT/BOOTX64.EFI
uki --initrd tiny.cpio --key sb/KEK.key --cert sb/KEK.crt -o esp-kek/EFI/BOOT/BOOTX64.EFI
cp esp-signed/EFI/BOOT/BOOTX64.EFI esp-unsigned/EFI/BOOT/BOOTX64.EFI
sbattach --remove esp-unsigned/EFI/BOOT/BOOTX64.EFI

SB='Secure boot enabled|Secure boot disabled|Access Denied'
cp VARS.fd v1.fd; expect "db-signed UKI, vars" "$(boot v1.fd esp-signed s1.log "$SB")" "Secure boot enabled"
cp VARS.fd v2.fd; expect "KEK-signed UKI, vars" "$(boot v2.fd esp-kek s2.log "$SB")" "Access Denied"
cp VARS.fd v3.fd; expect "unsigned UKI, vars" "$(boot v3.fd esp-unsigned s3.log "$SB")" "Access Denied"

# enrollment of the .auth files in setup mode
mkdir -p enr/bin enr/sb enr/dev
cp /bin/busybox enr/bin/
cp "/lib/modules/$KVER/kernel/fs/efivarfs/efivarfs.ko" enr/
for n in db KEK PK; do { printf '\047\000\000\000'; cat sb/$n.auth; } >enr/sb/$n.var; done
mknod enr/dev/console c 5 1
cat >enr/init <<'EOF'
#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B insmod /efivarfs.ko
$B mount -t efivarfs efivarfs /sys/firmware/efi/efivars
cd /sys/firmware/efi/efivars
G=8be4df61-93ca-11d2-aa0d-00e098032b8c
echo "SETUPMODE-BEFORE: $($B hexdump -v -e '/1 "%02x"' SetupMode-$G)"
for v in db:d719b2cb-3d3a-4596-a3bc-dad00e67656f KEK:$G PK:$G; do
  n=${v%%:*}; g=${v#*:}
  if $B dd if=/sb/$n.var of=$n-$g bs=1M 2>/dev/null; then echo "ENROLLED $n"; else echo "ENROLL-FAILED $n"; fi
done
echo "SETUPMODE-AFTER: $($B hexdump -v -e '/1 "%02x"' SetupMode-$G)"
echo "VESSEL-ENROLL-DONE"
$B poweroff -f
EOF
chmod +x enr/init
(cd enr && find . | LC_ALL=C sort | cpio --quiet -o -H newc) >enr.cpio
uki --initrd enr.cpio --key sb/db.key --cert sb/db.crt -o esp-enroll/EFI/BOOT/BOOTX64.EFI
cp "$TEMPLATE" v4.fd
boot v4.fd esp-enroll s4.log "$DONE" >/dev/null
expect "setup mode before enrollment" "$(grep -ao 'SETUPMODE-BEFORE: [0-9a-f]*' s4.log)" "SETUPMODE-BEFORE: 0600000001"
expect "enrolled db, KEK, PK" "$(grep -ao 'ENROLL[A-Z-]* [A-Za-z]*' s4.log | tr '\n' ' ')" "ENROLLED db ENROLLED KEK ENROLLED PK "
expect "setup mode after enrollment" "$(grep -ao 'SETUPMODE-AFTER: [0-9a-f]*' s4.log)" "SETUPMODE-AFTER: 0600000000"
expect "db-signed UKI, enrolled" "$(boot v4.fd esp-signed s5.log "$SB")" "Secure boot enabled"
exit $FAILED
