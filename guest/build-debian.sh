#!/usr/bin/env bash
# Builds the Vessel Debian test guest: debootstrap (minbase) of the Debian release this machine
# runs, from the mirror its apt uses, with linux-image-amd64, systemd, openssh-server,
# qemu-guest-agent, mariadb-client, iputils-ping and Vessel's cloud-init subset (guest/debian/).
# Installs what it needs (debootstrap, e2fsprogs, mtools, syslinux, ...) with apt-get. No loop mounts.
#
# Output (a cache entry, reused while the recipe stays the same):
#   $VESSEL_CACHE_DIR/guest/debian-<hash>/   (VESSEL_CACHE_DIR defaults to /var/cache/vessel)
#     debian.qcow2  2 GiB disk: MBR + syslinux, p1 FAT "VESSEL-BOOT" (kernel, initrd),
#                   p2 ext4 "vessel-root" (the Debian root filesystem)
#     vmlinuz, initrd.img, cmdline   for direct kernel boot
#     manifest.json
# The last line on stdout is the cache entry's directory. Options:
#   --print-dir   print the directory without building
#   --force       rebuild even if the entry exists
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
recipe="$here/debian"
mode=build
case "${1:-}" in
  --print-dir) mode=print ;;
  --force) mode=force ;;
  '') ;;
  *) echo "usage: $0 [--print-dir|--force]" >&2; exit 2 ;;
esac

log() { echo "build-debian: $*" >&2; }
die() { echo "build-debian: error: $*" >&2; exit 1; }

# The release and the mirror this machine's apt uses (deb822 sources first, then sources.list).
suite=${VESSEL_DEBIAN_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-}")}
[ -n "$suite" ] || die "cannot tell the Debian release from /etc/os-release"
mirror=${VESSEL_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # The stanza whose Suites has the bare release name.
    mirror=$(awk -v s="$suite" 'BEGIN{RS=""} $0 ~ "Suites:[^\n]*(^|[ \t])" s "([ \t]|\n|$)" {for(i=1;i<=NF;i++) if ($i=="URIs:") {print $(i+1); exit}}' "$f")
    [ -n "$mirror" ] && break
  done
fi
if [ -z "$mirror" ]; then
  mirror=$(awk -v s="$suite" '$1=="deb" && $0 !~ /\[/ && $3==s {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || die "no apt source for $suite found in /etc/apt"

packages="systemd-sysv udev dbus kmod linux-image-amd64 openssh-server qemu-guest-agent mariadb-client iputils-ping iproute2 zstd"
disk_mib=2048; boot_mib=64

hash=$( {
  cd "$here"
  echo "suite $suite mirror $mirror packages $packages disk $disk_mib"
  for f in build-debian.sh $(find debian -type f | LC_ALL=C sort); do echo "file $f $(sha256sum <"$f" | cut -c1-64)"; done
} | sha256sum | cut -c1-16)
cache_root=${VESSEL_CACHE_DIR:-/var/cache/vessel}/guest
out=$cache_root/debian-$hash
if [ "$mode" = print ]; then echo "$out"; exit 0; fi

complete() { [ -f "$1/manifest.json" ] && [ -f "$1/debian.qcow2" ] && [ -f "$1/vmlinuz" ] && [ -f "$1/initrd.img" ]; }

mkdir -p "$cache_root"
exec 9>"$cache_root/.debian.lock"
flock -w 1800 9 || die "timed out waiting for $cache_root/.debian.lock"
if [ "$mode" = build ] && complete "$out"; then echo "$out"; exit 0; fi

need=()
for c in debootstrap:debootstrap mkfs.ext4:e2fsprogs mkfs.vfat:dosfstools mcopy:mtools syslinux:syslinux sfdisk:fdisk qemu-img:qemu-utils zstd:zstd; do
  command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
done
[ -f /usr/lib/syslinux/mbr/mbr.bin ] || need+=(syslinux-common)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2 || {
    apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
  } || die "apt-get install ${need[*]} failed"
fi

start=$(date +%s.%N)
tmp=$(mktemp -d "$cache_root/.debian-build.XXXXXX")
root=$tmp/rootfs
cleanup() {
  for m in proc sys dev/pts dev; do umount -l "$root/$m" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
log "building $out ($suite from $mirror)"

# ---- debootstrap; the .debs are kept in the cache for the next build ----
debs=$cache_root/.debian-debs
mkdir -p "$debs"
debootstrap --variant=minbase --cache-dir="$debs" --include="${packages// /,}" "$suite" "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
  { tail -n 30 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }

cp -a "$recipe/rootfs/." "$root/"
chmod 0755 "$root"/usr/local/sbin/*
mount -t proc proc "$root/proc"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
in_root systemctl enable systemd-networkd.service vessel-cloudinit.service vessel-userdata.service vessel-ready.service >/dev/null 2>&1
# Nothing a test guest needs that would slow a TCG boot or wake it up later.
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
  systemd-networkd-wait-online.service >/dev/null 2>&1 || true
# A root shell on the serial console (as the tiny guest), no password anywhere (sshd: keys only).
mkdir -p "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
printf '[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %%I $TERM\n' \
  >"$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
# Host keys are made at first boot (ssh.service drop-in), so no two VMs share one.
rm -f "$root"/etc/ssh/ssh_host_*
# Kernel modules no VM uses (sound, GPUs, cameras, Wi-Fi, InfiniBand, exotic filesystems, ...).
kdir=$(ls -d "$root"/lib/modules/* | head -n 1)
kver=$(basename "$kdir")
for d in sound drivers/gpu drivers/media drivers/infiniband drivers/iio drivers/hwmon drivers/staging drivers/comedi \
  drivers/mtd drivers/target drivers/mmc drivers/bluetooth drivers/isdn drivers/thunderbolt drivers/net/wireless \
  drivers/net/can drivers/net/usb drivers/net/wwan drivers/usb/gadget drivers/usb/serial drivers/usb/misc drivers/watchdog \
  drivers/fpga drivers/w1 drivers/leds drivers/nfc drivers/atm drivers/spi drivers/power drivers/edac drivers/extcon \
  drivers/regulator drivers/platform/chrome drivers/platform/surface drivers/video/fbdev drivers/net/ethernet/mellanox \
  drivers/net/ethernet/qlogic drivers/net/ethernet/chelsio drivers/net/ethernet/broadcom drivers/net/ethernet/cavium \
  drivers/net/ethernet/marvell drivers/net/ethernet/sfc drivers/net/ethernet/huawei drivers/net/ethernet/emulex \
  net/bluetooth net/wireless net/mac80211 net/nfc net/can net/ieee802154 net/rxrpc \
  fs/xfs fs/btrfs fs/ocfs2 fs/smb fs/f2fs fs/ceph fs/gfs2 fs/jfs fs/nilfs2 fs/reiserfs fs/afs fs/coda fs/orangefs \
  fs/ntfs3 fs/ubifs fs/nfsd; do
  rm -rf "${kdir:?}/kernel/$d"
done
in_root depmod "$kver"
in_root update-initramfs -u -k "$kver" >"$tmp/initramfs.log" 2>&1 || { cat "$tmp/initramfs.log" >&2; die "update-initramfs failed"; }
# Smaller: no documentation, manual pages, translations or package caches.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/cache/apt/*.bin \
  "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
# The guest's apt uses the same sources as this machine's Debian (release and security).
cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/" 2>/dev/null || true
umount "$root/proc"
: >"$root/etc/machine-id"
rm -rf "${root:?}"/dev/* "$root"/run/* "$root"/tmp/*
echo "$kver" >"$root/etc/vessel-kernel"

cp -L "$root/boot/vmlinuz-$kver" "$tmp/vmlinuz"
cp -L "$root/boot/initrd.img-$kver" "$tmp/initrd.img"

# ---- disk: MBR + syslinux, p1 FAT (kernel, initrd), p2 ext4 root (as the tiny guest) ----
cmdline="console=ttyS0 root=LABEL=vessel-root rw net.ifnames=0 panic=-1"
boot_start=2048
boot_sectors=$((boot_mib * 2048)); root_start=$((boot_start + boot_sectors))
root_sectors=$((disk_mib * 2048 - root_start))
boot=$tmp/boot.img
mkfs.vfat -C -F 16 -n VESSEL-BOOT -h $boot_start "$boot" $((boot_sectors / 2)) >/dev/null
cat >"$tmp/syslinux.cfg" <<EOC
DEFAULT vessel
PROMPT 0
TIMEOUT 0
LABEL vessel
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline
EOC
MTOOLS_SKIP_CHECK=1 mcopy -i "$boot" "$tmp/vmlinuz" "$tmp/initrd.img" "$tmp/syslinux.cfg" ::/
syslinux --install "$boot"
mkfs.ext4 -q -F -L vessel-root -d "$root" -E root_owner=0:0 "$tmp/root.img" $((root_sectors / 2))k >/dev/null
raw=$tmp/disk.raw
truncate -s ${disk_mib}M "$raw"
sfdisk -q "$raw" <<EOC
label: dos
start=$boot_start, size=$boot_sectors, type=e, bootable
start=$root_start, size=$root_sectors, type=83
EOC
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
dd if="$boot" of="$raw" bs=512 seek=$boot_start conv=notrunc,sparse status=none
dd if="$tmp/root.img" of="$raw" bs=512 seek=$root_start conv=notrunc,sparse status=none
qemu-img convert -c -O qcow2 "$raw" "$tmp/debian.qcow2"

mkdir "$tmp/out"
mv "$tmp/debian.qcow2" "$tmp/vmlinuz" "$tmp/initrd.img" "$tmp/out/"
echo "$cmdline" >"$tmp/out/cmdline"
end=$(date +%s.%N)
ver() { chroot "$root" dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo unknown; }
cat >"$tmp/out/manifest.json" <<EOC
{
  "name": "debian",
  "hash": "$hash",
  "suite": "$suite",
  "kernelVersion": "$kver",
  "packages": "$packages",
  "systemd": "$(ver systemd)",
  "mariadbClient": "$(ver mariadb-client)",
  "cmdline": "$cmdline",
  "disk": "debian.qcow2",
  "diskVirtualSizeMiB": $disk_mib,
  "rootUsedMiB": $(du -sm "$root" | cut -f1),
  "rootLabel": "vessel-root",
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "buildSeconds": $(echo "$end - $start" | awk '{printf "%.1f", $1 - $3}')
}
EOC
[ "$mode" = force ] && [ -d "$out" ] && rm -rf "$out"
mv -T "$tmp/out" "$out" 2>/dev/null || complete "$out" || die "cannot publish $out"
find "$cache_root" -mindepth 1 -maxdepth 1 -type d -name 'debian-*' ! -path "$out" -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
log "done in $(echo "$end - $start" | awk '{printf "%.1f", $1 - $3}') s: $(du -h --apparent-size "$out/debian.qcow2" | cut -f1) qcow2, root $(du -sh "$root" | cut -f1)"
echo "$out"
