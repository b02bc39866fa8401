// The Debian test guest (guest/build-debian.sh): builds it once per recipe into the cache (a few
// minutes: debootstrap from the machine's Debian mirror) and says where its files are.
import { spawn } from 'node:child_process';
import { access, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface DebianGuest {
  /** Cache entry directory, e.g. /var/cache/vessel/guest/debian-<hash>. */
  dir: string;
  /** Root disk, qcow2, 2 GiB virtual: BIOS-bootable (syslinux) and usable with kernel boot. */
  disk: string;
  kernel: string;
  initrd: string;
  cmdline: string;
}

/** Lines the guest prints on its serial console (the tiny guest's where they make sense). */
export const DEBIAN_SERIAL = {
  ready: 'VESSEL-GUEST-READY',
  ip: /^VESSEL-IP (\S+)/m,
  cloudInit: /^VESSEL-CLOUDINIT (\S+)/m,
  hostname: /^VESSEL-HOSTNAME (\S+)/m,
  userDataExit: /^VESSEL-USERDATA-EXIT (\d+)/m,
} as const;

export const DEBIAN_BUILD_SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'build-debian.sh');

let pending: Promise<DebianGuest> | undefined;

/** Returns the Debian guest's files, building them first when the cache entry for the recipe is missing. */
export function ensureDebianGuest(opts: { timeoutMs?: number } = {}): Promise<DebianGuest> {
  pending ??= build(opts.timeoutMs ?? 30 * 60_000).catch((err: unknown) => {
    pending = undefined;
    throw err;
  });
  return pending;
}

async function build(timeoutMs: number): Promise<DebianGuest> {
  let dir = (await run(['--print-dir'], 30_000)).trim().split('\n').pop() ?? '';
  if (!(await complete(dir))) dir = (await run([], timeoutMs)).trim().split('\n').pop() ?? '';
  if (!(await complete(dir))) throw new Error(`build-debian.sh did not produce a complete guest in ${dir || '(no dir)'}`);
  const cmdline = (await readFile(path.join(dir, 'cmdline'), 'utf8')).trim();
  return { dir, disk: path.join(dir, 'debian.qcow2'), kernel: path.join(dir, 'vmlinuz'), initrd: path.join(dir, 'initrd.img'), cmdline };
}

async function complete(dir: string): Promise<boolean> {
  if (!dir) return false;
  try {
    for (const f of ['manifest.json', 'debian.qcow2', 'vmlinuz', 'initrd.img', 'cmdline']) await access(path.join(dir, f));
    return true;
  } catch {
    return false;
  }
}

function run(args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [DEBIAN_BUILD_SCRIPT, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`build-debian.sh ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${err.trim().slice(-2000)}`));
    });
  });
}
