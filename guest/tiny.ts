// The tiny test guest (guest/build-tiny.sh): builds it once per recipe into the cache and says
// where its files are. Tests and `vessel up` call ensureTinyGuest() before booting it.
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
