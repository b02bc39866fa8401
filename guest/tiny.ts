// The tiny test guest (guest/build-tiny.sh): builds it once per recipe into the cache and says
// where its files are. Tests and `vessel up` call ensureTinyGuest() before booting it.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { recipe, type GuestFiles } from './recipe.ts';

/** The tiny guest's files: a 128 MiB virtual root disk (tiny.qcow2), kernel, initramfs, cmdline. */
export type TinyGuest = GuestFiles;

/** Lines the guest prints on its serial console (ttyS0). */
export const TINY_SERIAL = {
  ready: 'VESSEL-GUEST-READY',
  ip: /^VESSEL-IP (\S+)/m,
  counter: /^VESSEL-COUNTER (\d+)/m,
  cloudInit: /^VESSEL-CLOUDINIT (\S+)/m,
  hostname: /^VESSEL-HOSTNAME (\S+)/m,
  failed: /^VESSEL-GUEST-FAILED (.*)$/m,
} as const;

/** Guest ports: 8080 answers one line `hostname=<h> counter=<n>` and closes; 80 serves it over HTTP. */
export const TINY_PORTS = { tcp: 8080, http: 80 } as const;

export const BUILD_SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'build-tiny.sh');

/**
 * Returns the tiny guest's files, building them first (about 5 s) if the cache entry for the
 * current recipe and kernel is missing. Cache root: $VESSEL_CACHE_DIR/guest (default
 * /var/cache/vessel/guest). Concurrent callers, in this process or others, share one build.
 */
export const ensureTinyGuest: (opts?: { timeoutMs?: number }) => Promise<TinyGuest> = recipe(BUILD_SCRIPT, 'tiny.qcow2', 10 * 60_000);

/**
 * QEMU's argv for the tiny guest booted straight from its kernel, without Vessel: TCG, 256 MiB,
 * one vCPU, `disk` (qcow2) on virtio-blk. For tests of QEMU-facing code below the agent; `extra`
 * adds devices (a console, a VGA card, the guest agent's channel).
 */
export function tinyQemuArgv(guest: TinyGuest, disk: string, extra: readonly string[] = []): string[] {
  return [
    ...['-machine', 'q35', '-accel', 'tcg', '-m', '256', '-smp', '1'],
    ...['-nodefaults', '-no-user-config', '-display', 'none'],
    ...['-drive', `file=${disk},format=qcow2,if=none,id=d0`, '-device', 'virtio-blk-pci,drive=d0'],
    ...['-kernel', guest.kernel, '-initrd', guest.initrd, '-append', guest.cmdline],
    ...extra,
  ];
}

/** Makes `file` a qcow2 overlay of the cached tiny disk, so a test's guest never writes the cache. */
export function tinyOverlay(guest: TinyGuest, file: string): string {
  const r = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', guest.disk, file], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`qemu-img create ${file}: ${r.stderr || r.error?.message}`);
  return file;
}
