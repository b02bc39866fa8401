// The tiny test guest (guest/build-tiny.sh): builds it once per recipe into the cache and says
// where its files are. Tests and `vessel up` call ensureTinyGuest() before booting it.
import { spawn } from 'node:child_process';
import { access, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface TinyGuest {
  /** Cache entry directory, e.g. /var/cache/vessel/guest/tiny-<hash>. */
  dir: string;
  /** Root disk, qcow2, 128 MiB virtual: BIOS-bootable (syslinux) and usable with kernel boot. */
  disk: string;
  /** Kernel and initramfs for direct kernel boot (KubeVirt spec.domain.firmware.kernelBoot). */
  kernel: string;
  initrd: string;
  /** Kernel command line for direct kernel boot. */
  cmdline: string;
}

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

let pending: Promise<TinyGuest> | undefined;

/**
 * Returns the tiny guest's files, building them first (about 5 s) if the cache entry for the
 * current recipe and kernel is missing. Cache root: $VESSEL_CACHE_DIR/guest (default
 * /var/cache/vessel/guest). Concurrent callers, in this process or others, share one build.
 */
export function ensureTinyGuest(opts: { timeoutMs?: number } = {}): Promise<TinyGuest> {
  pending ??= build(opts.timeoutMs ?? 10 * 60_000).catch((err: unknown) => {
    pending = undefined;
    throw err;
  });
  return pending;
}

async function build(timeoutMs: number): Promise<TinyGuest> {
  // Cheap check first: the script computes the cache key without building.
  let dir = (await run(['--print-dir'], 30_000)).trim().split('\n').pop() ?? '';
  if (!(await complete(dir))) dir = (await run([], timeoutMs)).trim().split('\n').pop() ?? '';
  if (!(await complete(dir))) throw new Error(`build-tiny.sh did not produce a complete guest in ${dir || '(no dir)'}`);
  const cmdline = (await readFile(path.join(dir, 'cmdline'), 'utf8')).trim();
  return {
    dir,
    disk: path.join(dir, 'tiny.qcow2'),
    kernel: path.join(dir, 'vmlinuz'),
    initrd: path.join(dir, 'initrd.img'),
    cmdline,
  };
}

async function complete(dir: string): Promise<boolean> {
  if (!dir) return false;
  try {
    for (const f of ['manifest.json', 'tiny.qcow2', 'vmlinuz', 'initrd.img', 'cmdline']) await access(path.join(dir, f));
    return true;
  } catch {
    return false;
  }
}

function run(args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [BUILD_SCRIPT, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
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
      else reject(new Error(`build-tiny.sh ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${err.trim().slice(-2000)}`));
    });
  });
}
