#!/usr/bin/env bash
# Installs what Vessel needs on a Debian machine (run as root): Debian packages with apt-get,
# npm packages with npm ci. Quiet and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each line: a check that passes when the Debian package is there, and the package.
need=()
want() { eval "$1" >/dev/null 2>&1 || need+=("$2"); }
want 'command -v openssl'               openssl
want 'command -v etcd'                  etcd-server        # the etcd store and its tests
want 'command -v etcdctl'               etcd-client
want 'command -v qemu-system-x86_64'    qemu-system-x86    # VMs (TCG when KVM does not work)
want 'command -v qemu-img'              qemu-utils         # disks and importers
want 'command -v xz'                    xz-utils
want 'command -v curl'                  curl               # the import benchmark's baseline
# guest/build-tiny.sh: the tiny test guest (Debian cloud kernel + busybox)
want 'ls /boot/vmlinuz-*-cloud-amd64'   linux-image-cloud-amd64
want 'dpkg -s busybox-static'           busybox-static
want 'test -x /usr/sbin/qemu-ga'        qemu-guest-agent   # copied into the guest (snapshots freeze through it)
want 'test -x /usr/sbin/dropbear'       dropbear-bin       # copied into the guest (vessel ssh logs in to it)
want 'command -v cpio'                  cpio
want 'command -v mkfs.ext4'             e2fsprogs
want 'command -v mkfs.vfat'             dosfstools
want 'command -v mcopy'                 mtools
want 'command -v syslinux'              syslinux
want 'test -f /usr/lib/syslinux/mbr/mbr.bin' syslinux-common
want 'command -v sfdisk'                fdisk
want 'arping -V | grep -q iputils'  iputils-arping     # a masquerade VM's pod announces its address after a live migration
want 'command -v nft'                   nftables           # the cluster network: NAT and (later) Services, policies
want 'command -v dnsmasq'               dnsmasq-base       # the cluster network: DHCP and DNS per node
want 'command -v genisoimage'           genisoimage        # cloud-init seed ISOs
want 'test -f /usr/share/OVMF/OVMF_CODE_4M.fd' ovmf      # UEFI firmware
want 'command -v docker-registry'       docker-registry    # the registry importer's tests
want '/usr/bin/python3 -c "import kubernetes"' python3-kubernetes # the Python client's e2e test (e2e/api-defects)
want 'command -v go'                    golang-go          # builds vcsim (e2e/vcsim) for the vsphere provider's tests
want 'test -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator' golang-github-vmware-govmomi-dev
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  if [ "$(id -u)" != 0 ]; then echo "setup: run as root, or: sudo apt-get install -y ${need[*]}" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# npm ci when node_modules is missing or older than the lock file.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci (builds better-sqlite3 from source: about two minutes)"
  npm ci --no-audit --no-fund --loglevel=error
fi

command -v kubectl >/dev/null || echo "setup: note: kubectl is not installed; the kubectl end-to-end tests will fail until it is (Debian does not package it)." >&2
exit 0
