/**
 * Which accelerator this host can use. /dev/kvm can exist and still not work (nested hosts,
 * broken modules: on some, real-mode code runs and the first protected-mode instructions end
 * in "KVM internal error ... emulation failure"), so KVM counts only when a probe boot gets
 * through a Linux kernel's early boot: the host's kernel, no root, `panic=-1 -no-reboot`, so
 * QEMU exits once the kernel panics. A hang, an error or a missing panic line means TCG.
 * Without a kernel in /boot, a 64 KiB BIOS that writes to the isa-debug-exit port is the
 * (weaker) probe.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

export type Accelerator = 'kvm' | 'tcg';

const MARK = 0x2a;

/** mov al, 0x2a; out 0xf4, al; hlt; jmp $-1, at the reset vector (offset 0xfff0 of a 64 KiB BIOS). */
function probeBios(): Buffer {
  const bios = Buffer.alloc(64 * 1024, 0xf4);
  Buffer.from([0xb0, MARK, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]).copy(bios, 0xfff0);
  return bios;
}

function runQemu(args: string[], timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn('qemu-system-x86_64', ['-display', 'none', '-nodefaults', '-no-user-config', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => {
      out = (out + d).slice(-8192);
    });
    p.stderr.on('data', (d) => {
      out = (out + d).slice(-8192);
      if (/KVM internal error|emulation failure/.test(out)) p.kill('SIGKILL'); // it hangs from here on
    });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', () => {
      clearTimeout(timer);
      resolve({ code: null, out });
    });
    p.on('exit', (c) => {
      clearTimeout(timer);
      resolve({ code: c, out });
    });
  });
}

async function hostKernel(): Promise<string | undefined> {
  const names = (await readdir('/boot').catch(() => [] as string[])).filter((n) => n.startsWith('vmlinuz-')).sort();
  return names.length ? join('/boot', names[names.length - 1]) : undefined;
}

export async function probeAccelerator(accel: Accelerator, timeoutMs = 8_000): Promise<boolean> {
  if (accel === 'kvm' && !existsSync('/dev/kvm')) return false;
  const kernel = await hostKernel();
  if (kernel) {
    const r = await runQemu(
      [
        '-accel',
        accel,
        '-machine',
        'q35',
        '-m',
        '128',
        '-serial',
        'stdio',
        '-no-reboot',
        '-kernel',
        kernel,
        '-append',
        'console=ttyS0 panic=-1 root=/dev/nonexistent loglevel=4',
      ],
      timeoutMs,
    );
    return r.code === 0 && /Kernel panic|VFS:/.test(r.out);
  }
  const dir = await mkdtemp(join(tmpdir(), 'vessel-accel-'));
  try {
    const bios = join(dir, 'probe.bin');
    await writeFile(bios, probeBios());
    const r = await runQemu(['-accel', accel, '-machine', 'pc', '-bios', bios, '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04', '-m', '16'], timeoutMs);
    return r.code === ((MARK << 1) | 1);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Host-wide, like the guest image cache: every agent and test on this host shares the answer. */
export const ACCEL_CACHE = join(process.env.VESSEL_CACHE_DIR || '/var/cache/vessel', 'accel.json');

/**
 * KVM when its probe boots (a working KVM reaches the panic in about a second; the probe
 * gives it 8), else TCG. $VESSEL_ACCEL forces one. The answer is kept in `cacheFile` for this
 * kernel and QEMU, so agents do not probe again.
 */
export async function detectAccelerator(cacheFile: string | undefined = ACCEL_CACHE): Promise<Accelerator> {
  const forced = process.env.VESSEL_ACCEL;
  if (forced === 'kvm' || forced === 'tcg') return forced;
  const key = `${release()} ${await qemuVersion()}`;
  if (cacheFile) {
    const cached = await readFile(cacheFile, 'utf8').then(
      (t) => JSON.parse(t) as { key: string; accel: Accelerator },
      () => undefined,
    );
    if (cached?.key === key) return cached.accel;
  }
  const accel: Accelerator = (await probeAccelerator('kvm')) ? 'kvm' : 'tcg';
  if (cacheFile) {
    // The cache only saves the next start a probe: without it the answer is the same, just slower.
    await mkdir(dirname(cacheFile), { recursive: true }).catch(() => undefined);
    await writeFile(cacheFile, JSON.stringify({ key, accel })).catch(() => undefined);
  }
  return accel;
}

async function qemuVersion(): Promise<string> {
  const r = await runQemu(['--version'], 5000);
  return r.out.split('\n')[0] ?? '';
}
