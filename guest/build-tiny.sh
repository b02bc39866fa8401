#!/usr/bin/env bash
# Builds the Vessel tiny test guest from Debian packages already installed on this machine
# (linux-image-cloud-amd64, busybox-static, qemu-guest-agent, dropbear-bin, e2fsprogs, dosfstools, mtools,
# syslinux, fdisk, cpio, qemu-utils): no network, no loop mounts.
#
# Output (a cache entry, reused while the recipe and the kernel stay the same):
#   $VESSEL_CACHE_DIR/guest/tiny-<hash>/   (VESSEL_CACHE_DIR defaults to /var/cache/vessel)
#     tiny.qcow2   128 MiB disk: MBR + syslinux, p1 FAT "VESSEL-BOOT" (kernel, initrd),
#                  p2 ext4 "vessel-root" (busybox root filesystem)
#     vmlinuz, initrd.img, cmdline   for direct kernel boot (KubeVirt kernelBoot / qemu -kernel)
#     manifest.json
# The last line on stdout is the cache entry's directory. Options:
#   --print-dir   print the directory without building
#   --force       rebuild even if the entry exists
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
recipe="$here/tiny"
mode=build
case "${1:-}" in
  --print-dir) mode=print ;;
  --force) mode=force ;;
  '') ;;
  *) echo "usage: $0 [--print-dir|--force]" >&2; exit 2 ;;
esac

log() { echo "build-tiny: $*" >&2; }
die() { echo "build-tiny: error: $*" >&2; exit 1; }

# Newest Debian cloud kernel, unless VESSEL_GUEST_KERNEL names a version.
kver=${VESSEL_GUEST_KERNEL:-}
if [ -z "$kver" ]; then
  kimg=$(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$kimg" ] || die "no /boot/vmlinuz-*-cloud-amd64: apt-get install linux-image-cloud-amd64 (scripts/setup.sh does)"
  kver=${kimg#/boot/vmlinuz-}
fi
kimg=/boot/vmlinuz-$kver
moddir=/lib/modules/$kver
[ -r "$kimg" ] || die "kernel $kimg not readable"
[ -d "$moddir" ] || die "no $moddir"
busybox=/bin/busybox
# grep without -q reads all of busybox's output: with pipefail, -q quitting early would make busybox die of SIGPIPE.
[ -x "$busybox" ] && "$busybox" --list 2>/dev/null | grep -x acpid >/dev/null || die "no $busybox with acpid: apt-get install busybox-static"
if ldd "$busybox" >/dev/null 2>&1; then die "$busybox is dynamically linked: apt-get install busybox-static"; fi
# The QEMU guest agent (Debian's qemu-guest-agent) and the shared libraries it loads: the only
# dynamically linked program in the guest.
qga=/usr/sbin/qemu-ga
[ -x "$qga" ] || die "no $qga: apt-get install qemu-guest-agent (scripts/setup.sh does)"
qga_libs=$(ldd "$qga" | grep -o '/[^ ]*' | LC_ALL=C sort -u) || die "ldd $qga failed"
[ -n "$qga_libs" ] || die "ldd found no libraries for $qga"
# Debian's dropbear SSH server (dropbear-bin, 180 KB + 5 small libraries): `vessel ssh` logs in
# with a key the user data puts into /root/.ssh/authorized_keys.
dropbear=/usr/sbin/dropbear
[ -x "$dropbear" ] || die "no $dropbear: apt-get install dropbear-bin (scripts/setup.sh does)"
dropbear_libs=$(ldd "$dropbear" | grep -o '/[^ ]*' | LC_ALL=C sort -u) || die "ldd $dropbear failed"

# Cache key: every recipe file (path and content) + kernel version (and file size, mtime) + busybox
# version + the contents of qemu-ga and its libraries.
hash=$( {
  cd "$here"
  echo "kernel $kver $(stat -c '%s %Y' "$kimg")"
  "$busybox" 2>&1 | head -n 1
  for f in $qga $qga_libs $dropbear $dropbear_libs; do echo "bin $f $(sha256sum <"$f" | cut -c1-64)"; done
  for f in build-tiny.sh $(find tiny -type f | LC_ALL=C sort); do
    echo "file $f $(sha256sum <"$f" | cut -c1-64)"
  done
} | sha256sum | cut -c1-16)
cache_root=${VESSEL_CACHE_DIR:-/var/cache/vessel}/guest
out=$cache_root/tiny-$hash
if [ "$mode" = print ]; then echo "$out"; exit 0; fi

complete() { [ -f "$1/manifest.json" ] && [ -f "$1/tiny.qcow2" ] && [ -f "$1/vmlinuz" ] && [ -f "$1/initrd.img" ]; }

mkdir -p "$cache_root"
# One build at a time per cache root; others wait and then reuse the entry.
exec 9>"$cache_root/.tiny.lock"
flock -w 600 9 || die "timed out waiting for $cache_root/.tiny.lock"
if [ "$mode" = build ] && complete "$out"; then echo "$out"; exit 0; fi

for c in mkfs.ext4 mkfs.vfat mcopy syslinux sfdisk cpio gzip qemu-img; do
  command -v $c >/dev/null || die "missing $c (run scripts/setup.sh)"
done
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || die "missing /usr/lib/syslinux/mbr/mbr.bin (package syslinux-common)"

start=$(date +%s.%N)
tmp=$(mktemp -d "$cache_root/.tiny-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log "building $out (kernel $kver)"

# ---- initramfs: busybox + the modules the cloud kernel does not build in ----
ird=$tmp/initramfs
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$busybox" "$ird/bin/busybox"
install -m 0755 "$recipe/initramfs-init" "$ird/init"
if [ "$(id -u)" = 0 ]; then mknod -m 600 "$ird/dev/console" c 5 1; fi

# Wanted modules; dependencies come first (from modules.dep). Missing ones (built in) are skipped.
want="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_net
  virtio_scsi virtio_rng virtio_console button evdev
  cdrom sr_mod sd_mod libata ata_piix isofs fat vfat nls_cp437 nls_ascii nls_iso8859-1 nls_utf8"
declare -A seen=()
order=()
modpath() { # name -> path relative to $moddir (with - and _ equivalent)
  local n; n=$(echo "$1" | sed 's/[-_]/[-_]/g')
  grep -E "^(kernel|updates)/.*/${n}\.ko(\.xz|\.zst|\.gz)?:" "$moddir/modules.dep" | head -n 1 | cut -d: -f1 || true
}
add() { # path (relative) with its dependencies first
  local p=$1 d
  [ -n "${seen[$p]:-}" ] && return 0
  seen[$p]=1
  for d in $(grep -E "^${p//./\\.}:" "$moddir/modules.dep" | cut -d: -f2- || true); do add "$d"; done
  order+=("$p")
}
for m in $want; do
  p=$(modpath "$m")
  if [ -n "$p" ]; then add "$p"
  elif grep -qE "/$(echo "$m" | sed 's/[-_]/[-_]/g')\.ko" "$moddir/modules.builtin" 2>/dev/null; then :
  else log "note: module $m neither built in nor in $moddir"; fi
done
: >"$ird/lib/modules/load.order"
for p in "${order[@]}"; do
  base=$(basename "$p"); name=${base%%.ko*}
  case "$base" in
    *.ko) cp "$moddir/$p" "$ird/lib/modules/$name.ko" ;;
    *.ko.xz) xz -dc "$moddir/$p" >"$ird/lib/modules/$name.ko" ;;
    *.ko.zst) zstd -qdc "$moddir/$p" >"$ird/lib/modules/$name.ko" ;;
    *.ko.gz) gzip -dc "$moddir/$p" >"$ird/lib/modules/$name.ko" ;;
  esac
  echo "$name" >>"$ird/lib/modules/load.order"
done
(cd "$ird" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) | gzip -9n >"$tmp/initrd.img"
cp "$kimg" "$tmp/vmlinuz"

# ---- root filesystem (ext4 from a directory: mkfs.ext4 -d) ----
root=$tmp/rootfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,var/lib,var/log,mnt}
cp "$busybox" "$root/bin/busybox"
for a in $("$busybox" --list-full); do
  [ -e "$root/$a" ] || ln -s /bin/busybox "$root/$a"
done
# qemu-ga with its libraries at the paths ldd resolved (the loader's default directories).
cp "$qga" "$root/usr/sbin/qemu-ga"
for l in $qga_libs; do mkdir -p "$root$(dirname "$l")"; cp -L "$l" "$root$l"; done
cp "$dropbear" "$root/usr/sbin/dropbear"
for l in $dropbear_libs; do mkdir -p "$root$(dirname "$l")"; cp -L "$l" "$root$l"; done
mkdir -p "$root/etc/dropbear"
cp -a "$recipe/rootfs/." "$root/"
chmod 0755 "$root"/etc/init.d/* "$root"/usr/bin/vessel-* "$root"/etc/udhcpc/default.script "$root"/etc/acpi/PWRF/* "$root"/etc/qemu/fsfreeze-hook
chmod 1777 "$root/tmp"; chmod 0700 "$root/root"
ln -s /run/resolv.conf "$root/etc/resolv.conf"
echo "$kver" >"$root/etc/vessel-kernel"

# ---- disk: MBR + syslinux, p1 FAT (kernel, initrd), p2 ext4 root ----
# no_timer_check: under TCG on a loaded host the vCPU can starve long enough for the kernel's
# early IO-APIC timer check to fail ("IO-APIC + timer doesn't work!"), a panic and a reboot loop.
cmdline="console=ttyS0 root=LABEL=vessel-root rootwait panic=-1 no_timer_check"
disk_mib=128; boot_start=2048; boot_mib=40
boot_sectors=$((boot_mib * 2048)); root_start=$((boot_start + boot_sectors))
root_sectors=$((disk_mib * 2048 - root_start))
boot=$tmp/boot.img
mkfs.vfat -C -F 16 -n VESSEL-BOOT -h $boot_start "$boot" $((boot_sectors / 2)) >/dev/null
cat >"$tmp/syslinux.cfg" <<EOF
DEFAULT vessel
PROMPT 0
TIMEOUT 0
LABEL vessel
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline
EOF
MTOOLS_SKIP_CHECK=1 mcopy -i "$boot" "$tmp/vmlinuz" "$tmp/initrd.img" "$tmp/syslinux.cfg" ::/
syslinux --install "$boot"
mkfs.ext4 -q -F -L vessel-root -d "$root" -E root_owner=0:0 "$tmp/root.img" $((root_sectors / 2))k >/dev/null
raw=$tmp/disk.raw
truncate -s ${disk_mib}M "$raw"
sfdisk -q "$raw" <<EOF
label: dos
start=$boot_start, size=$boot_sectors, type=e, bootable
start=$root_start, size=$root_sectors, type=83
EOF
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
dd if="$boot" of="$raw" bs=512 seek=$boot_start conv=notrunc,sparse status=none
dd if="$tmp/root.img" of="$raw" bs=512 seek=$root_start conv=notrunc,sparse status=none
qemu-img convert -O qcow2 "$raw" "$tmp/tiny.qcow2"

mkdir "$tmp/out"
mv "$tmp/tiny.qcow2" "$tmp/vmlinuz" "$tmp/initrd.img" "$tmp/out/"
echo "$cmdline" >"$tmp/out/cmdline"
end=$(date +%s.%N)
cat >"$tmp/out/manifest.json" <<EOF
{
  "name": "tiny",
  "hash": "$hash",
  "kernelVersion": "$kver",
  "busybox": "$("$busybox" 2>&1 | head -n 1 | cut -d' ' -f2)",
  "qemuGuestAgent": "$("$qga" -V 2>&1 | head -n 1 | sed 's/.*Agent //; s/"//g')",
  "cmdline": "$cmdline",
  "disk": "tiny.qcow2",
  "diskVirtualSizeMiB": $disk_mib,
  "rootLabel": "vessel-root",
  "modules": [$(sed 's/.*/"&"/' "$ird/lib/modules/load.order" | paste -sd, -)],
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "buildSeconds": $(echo "$end - $start" | awk '{printf "%.1f", $1 - $3}')
}
EOF
[ "$mode" = force ] && [ -d "$out" ] && rm -rf "$out"
# Atomic publish: rename fails if another builder got there first (then its entry is used).
mv -T "$tmp/out" "$out" 2>/dev/null || complete "$out" || die "cannot publish $out"
# Entries of older recipes: removed once unused for a day (a running VM may still use one).
find "$cache_root" -mindepth 1 -maxdepth 1 -type d -name 'tiny-*' ! -path "$out" -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
log "done in $(echo "$end - $start" | awk '{printf "%.1f", $1 - $3}') s: $(du -h --apparent-size "$out/tiny.qcow2" | cut -f1) qcow2, $(du -h "$out/initrd.img" | cut -f1) initrd"
echo "$out"
