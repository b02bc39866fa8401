// A guest recipe's cache entry (build-tiny.sh, build-debian.sh): each script prints its cache
// directory (`--print-dir` without building), builds into it when missing, and leaves there
// manifest.json, the qcow2 disk, vmlinuz, initrd.img and cmdline. Concurrent callers in one
// process share one build; the scripts lock against other processes.
import { spawn } from 'node:child_process';
import { access, readFile } from 'node:fs/promises';
import path from 'node:path';

export interface GuestFiles {
  /** Cache entry directory, e.g. /var/cache/vessel/guest/<recipe>-<hash>. */
  dir: string;
  /** Root disk, qcow2: BIOS-bootable (syslinux) and usable with kernel boot. */
  disk: string;
  /** Kernel and initramfs for direct kernel boot (KubeVirt spec.domain.firmware.kernelBoot). */
  kernel: string;
  initrd: string;
  /** Kernel command line for direct kernel boot. */
  cmdline: string;
}

/** One recipe: `ensure()` returns its files, building them first when its cache entry is missing. */
export function recipe(script: string, diskName: string, defaultTimeoutMs: number): (opts?: { timeoutMs?: number }) => Promise<GuestFiles> {
  let pending: Promise<GuestFiles> | undefined;
  const name = path.basename(script);

  function run(args: string[], timeoutMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const child = spawn('bash', [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
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
        else reject(new Error(`${name} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${err.trim().slice(-2000)}`));
      });
    });
  }

  async function complete(dir: string): Promise<boolean> {
    if (!dir) return false;
    try {
      for (const f of ['manifest.json', diskName, 'vmlinuz', 'initrd.img', 'cmdline']) await access(path.join(dir, f));
      return true;
    } catch {
      return false;
    }
  }

  async function build(timeoutMs: number): Promise<GuestFiles> {
    // Cheap check first: the script computes the cache key without building.
    let dir = (await run(['--print-dir'], 30_000)).trim().split('\n').pop() ?? '';
    if (!(await complete(dir))) dir = (await run([], timeoutMs)).trim().split('\n').pop() ?? '';
    if (!(await complete(dir))) throw new Error(`${name} did not produce a complete guest in ${dir || '(no dir)'}`);
    const cmdline = (await readFile(path.join(dir, 'cmdline'), 'utf8')).trim();
    return { dir, disk: path.join(dir, diskName), kernel: path.join(dir, 'vmlinuz'), initrd: path.join(dir, 'initrd.img'), cmdline };
  }

  return (opts = {}) =>
    (pending ??= build(opts.timeoutMs ?? defaultTimeoutMs).catch((err: unknown) => {
      pending = undefined;
      throw err;
    }));
}
