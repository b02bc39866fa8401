#!/usr/bin/env bash
# The guest of e2e/virt-v2v.scenario.test.ts: a minimal debootstrapped Debian (the release and
# mirror this machine's apt uses) with linux-image-amd64 and GRUB 2 on a raw MBR disk, the way
# a VMware guest is: virt-v2v converts only guests whose bootloader it knows (GRUB 1/2), not
# the syslinux of guest/build-debian.sh. GRUB is put on the disk without loop devices or
# grub-install: boot.img in the MBR, a core.img from grub-mkimage right after it (grub-mkimage
# fills in the sector count diskboot.img reads, from sector 2 on). A systemd unit prints
# VESSEL-V2V-BOOTED on the serial console once the system is up.
#
# Output, cached by recipe hash: $VESSEL_CACHE_DIR/guest/v2v-debian-<hash>/disk.raw (2 GiB, sparse).
# The last line on stdout is the raw disk's path.
set -euo pipefail

log() { echo "v2v-guest: $*" >&2; }
die() { echo "v2v-guest: error: $*" >&2; exit 1; }

suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$suite" ] || die "cannot tell the Debian release"
mirror=
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  mirror=$(awk -v s="$suite" 'BEGIN{RS=""} $0 ~ "Suites:[^\n]*(^|[ \t])" s "([ \t]|\n|$)" {for(i=1;i<=NF;i++) if ($i=="URIs:") {print $(i+1); exit}}' "$f")
  [ -n "$mirror" ] && break
done
[ -n "$mirror" ] || mirror=$(awk -v s="$suite" '$1=="deb" && $3==s {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || die "no apt source for $suite"

packages="systemd-sysv udev kmod linux-image-amd64 grub-pc-bin grub2-common"
disk_mib=2048
hash=$( { echo "$suite $mirror $packages $disk_mib"; sha256sum <"$0"; } | sha256sum | cut -c1-16)
cache=${VESSEL_CACHE_DIR:-/var/cache/vessel}/guest
out=$cache/v2v-debian-$hash
mkdir -p "$cache"
exec 9>"$cache/.v2v-debian.lock"
flock -w 1800 9 || die "timed out waiting for the lock"
if [ -f "$out/disk.raw" ]; then echo "$out/disk.raw"; exit 0; fi

need=()
for c in debootstrap:debootstrap mkfs.ext4:e2fsprogs sfdisk:fdisk grub-mkimage:grub-common; do
  command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
done
[ -f /usr/lib/grub/i386-pc/boot.img ] || need+=(grub-pc-bin)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
fi

start=$(date +%s)
tmp=$(mktemp -d "$cache/.v2v-build.XXXXXX")
root=$tmp/rootfs
cleanup() {
  for m in proc sys dev; do umount -l "$root/$m" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
debs=$cache/.debian-debs
mkdir -p "$debs"
log "debootstrap $suite from $mirror"
debootstrap --variant=minbase --cache-dir="$debs" --include="${packages// /,}" "$suite" "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
  { tail -n 30 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }

kver=$(basename "$(ls -d "$root"/lib/modules/* | head -n 1)")
cmdline="console=ttyS0 net.ifnames=0 panic=-1"
echo v2v-debian >"$root/etc/hostname"
printf 'LABEL=v2v-root / ext4 defaults 0 1\n' >"$root/etc/fstab"
# What update-grub (virt-v2v runs it) writes into grub.cfg: the serial console, no menu wait.
cat >"$root/etc/default/grub" <<EOC
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="$cmdline"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOC
cat >"$root/etc/systemd/system/vessel-v2v-marker.service" <<'EOC'
[Unit]
Description=Print the boot marker on the serial console
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "VESSEL-V2V-BOOTED $(uname -r)" >/dev/ttyS0'
[Install]
WantedBy=multi-user.target
EOC
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/vessel-v2v-marker.service "$root/etc/systemd/system/multi-user.target.wants/vessel-v2v-marker.service"
# Nothing that slows a TCG boot.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer systemd-timesyncd.service; do ln -sf /dev/null "$root/etc/systemd/system/$u"; done
# The config GRUB boots from now (virt-v2v regenerates it with update-grub).
mkdir -p "$root/boot/grub"
cat >"$root/boot/grub/grub.cfg" <<EOC
serial --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry 'Debian GNU/Linux' {
  search --no-floppy --label --set=root v2v-root
  linux /boot/vmlinuz-$kver root=LABEL=v2v-root ro $cmdline
  initrd /boot/initrd.img-$kver
}
EOC
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
: >"$root/etc/machine-id"

# One ext4 partition from 1 MiB; GRUB's core.img in the gap before it.
root_start=2048
root_sectors=$((disk_mib * 2048 - root_start))
mkfs.ext4 -q -F -L v2v-root -d "$root" -E root_owner=0:0 "$tmp/root.img" $((root_sectors / 2))k >/dev/null
raw=$tmp/disk.raw
truncate -s ${disk_mib}M "$raw"
printf 'label: dos\nstart=%s, size=%s, type=83, bootable\n' $root_start $root_sectors | sfdisk -q "$raw"
grub-mkimage -O i386-pc -o "$tmp/core.img" -p '(hd0,msdos1)/boot/grub' biosdisk part_msdos ext2 search search_label normal linux serial terminal configfile echo
[ "$(stat -c %s "$tmp/core.img")" -lt $(((root_start - 1) * 512)) ] || die "core.img does not fit before the partition"
dd if=/usr/lib/grub/i386-pc/boot.img of="$raw" bs=440 count=1 conv=notrunc status=none
dd if="$tmp/core.img" of="$raw" bs=512 seek=1 conv=notrunc status=none
dd if="$tmp/root.img" of="$raw" bs=512 seek=$root_start conv=notrunc,sparse status=none
mkdir "$tmp/out"
mv "$raw" "$tmp/out/disk.raw"
mv -T "$tmp/out" "$out"
log "built in $(($(date +%s) - start)) s"
echo "$out/disk.raw"
