// The Debian test guest (guest/build-debian.sh): builds it once per recipe into the cache (a few
// minutes: debootstrap from the machine's Debian mirror) and says where its files are.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { recipe, type GuestFiles } from './recipe.ts';

/** The Debian guest's files: a 2 GiB virtual root disk (debian.qcow2), kernel, initramfs, cmdline. */
export type DebianGuest = GuestFiles;

/** Lines the guest prints on its serial console (the tiny guest's where they make sense). */
export const DEBIAN_SERIAL = {
  ready: 'VESSEL-GUEST-READY',
  ip: /^VESSEL-IP (\S+)/m,
  cloudInit: /^VESSEL-CLOUDINIT (\S+)/m,
  hostname: /^VESSEL-HOSTNAME (\S+)/m,
  userDataExit: /^VESSEL-USERDATA-EXIT (\d+)/m,
} as const;

export const DEBIAN_BUILD_SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'build-debian.sh');

/** Returns the Debian guest's files, building them first when the cache entry for the recipe is missing. */
export const ensureDebianGuest: (opts?: { timeoutMs?: number }) => Promise<DebianGuest> = recipe(DEBIAN_BUILD_SCRIPT, 'debian.qcow2', 30 * 60_000);
