/**
 * A thin typed wrapper over the `qemu-img` command. Every call gets an argv array (never a
 * shell string), an explicit format where one is known (so qemu-img never probes an
 * untrusted file on its own), an optional timeout and AbortSignal, and failures become
 * QemuImgError with qemu-img's own first error line in the message.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { QemuImgError } from './errors.ts';

/** The formats Vessel accepts as import input (qemu-img's names: vpc is VHD). */
export type DiskFormat = 'raw' | 'qcow2' | 'vmdk' | 'vpc' | 'vhdx';

/** What `qemu-img info --output=json` reports, reduced to the fields Vessel reads. */
export interface ImageInfo {
  format: string;
  virtualSize: number;
  actualSize?: number;
  clusterSize?: number;
  encrypted: boolean;
  dirty: boolean;
  backingFilename?: string;
  backingFormat?: string;
  /** format-specific.type, e.g. 'qcow2', 'vmdk'. */
  specificType?: string;
  /** format-specific.data as qemu-img printed it (shape depends on the format). */
  specific: Record<string, unknown>;
  /** The parsed JSON, for anything not lifted above. */
  raw: Record<string, unknown>;
}

export interface RunOptions {
  signal?: AbortSignal;
  /** Kill qemu-img after this long (ms). No limit when unset. */
  timeoutMs?: number;
}

export interface InfoOptions extends RunOptions {
  /** Open with this format instead of letting qemu-img probe (always pass it for untrusted files). */
  format?: DiskFormat | string;
  /** -U: read an image another process holds open (a running VM's disk). */
  forceShare?: boolean;
  /**
   * Run under prlimit (1 GiB address space, 30 s CPU) as OpenStack does, because crafted
   * headers have made `qemu-img info` allocate or spin without bound (CVE-2015-5162).
   */
  untrusted?: boolean;
}

/** `qemu-img info --output=json [-f fmt] [-U] path`. */
export async function info(path: string, opts: InfoOptions = {}): Promise<ImageInfo> {
  const args = ['info', '--output=json'];
  if (opts.format) args.push('-f', opts.format);
  if (opts.forceShare) args.push('-U');
  args.push(path);
  const { stdout } = await run(args, { ...opts, limited: opts.untrusted });
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(stdout) as Record<string, unknown>;
  } catch (e) {
    throw new QemuImgError(args, 0, '', `qemu-img info printed something that is not JSON; is qemu-img too old? (${String(e)})`);
  }
  const fs = (parsed['format-specific'] ?? {}) as { type?: string; data?: Record<string, unknown> };
  return {
    format: String(parsed.format),
    virtualSize: Number(parsed['virtual-size']),
    actualSize: typeof parsed['actual-size'] === 'number' ? parsed['actual-size'] : undefined,
    clusterSize: typeof parsed['cluster-size'] === 'number' ? parsed['cluster-size'] : undefined,
    encrypted: parsed.encrypted === true,
    dirty: parsed['dirty-flag'] === true,
    backingFilename: typeof parsed['backing-filename'] === 'string' ? parsed['backing-filename'] : undefined,
    backingFormat: typeof parsed['backing-filename-format'] === 'string' ? parsed['backing-filename-format'] : undefined,
    specificType: fs.type,
    specific: fs.data ?? {},
    raw: parsed,
  };
}

export interface ConvertOptions extends RunOptions {
  /** Source format; pass it so qemu-img never probes (probing untrusted files is unsafe). */
  srcFormat: DiskFormat | string;
  /** Output format; qcow2 unless told. */
  outFormat?: DiskFormat | string;
  /** -o key=value pairs, e.g. { preallocation: 'metadata', cluster_size: '65536' }. */
  options?: Record<string, string>;
  /** Called with 0..100 as qemu-img -p prints progress. */
  onProgress?: (percent: number) => void;
  /** -W: allow out-of-order writes (faster on some targets; qcow2 output stays valid). */
  outOfOrder?: boolean;
  /** -m N: parallel coroutines (qemu-img default 8). */
  coroutines?: number;
  /** -t: cache mode of the destination (qemu-img convert's default is 'unsafe': no flushes). */
  destCache?: 'none' | 'writeback' | 'writethrough' | 'directsync' | 'unsafe';
  /** -T: cache mode of the source. */
  srcCache?: 'none' | 'writeback' | 'writethrough' | 'directsync' | 'unsafe';
  /** -S: sparse detection size in bytes ('0' writes every block, even zeros). */
  sparseSize?: string;
  /** -n: the target already exists; do not create it. */
  noCreate?: boolean;
  /** -U: read a source a running QEMU holds (safe only when nobody writes it, e.g. a snapshot file). */
  forceShare?: boolean;
}

/** `qemu-img convert -p -f src -O out [-o k=v,...] src dest`, reporting progress. */
export async function convert(src: string, dest: string, opts: ConvertOptions): Promise<void> {
  const args = ['convert', '-p', '-f', opts.srcFormat, '-O', opts.outFormat ?? 'qcow2'];
  const o = optionString(opts.options);
  if (o) args.push('-o', o);
  if (opts.outOfOrder) args.push('-W');
  if (opts.coroutines) args.push('-m', String(opts.coroutines));
  if (opts.destCache) args.push('-t', opts.destCache);
  if (opts.srcCache) args.push('-T', opts.srcCache);
  if (opts.sparseSize !== undefined) args.push('-S', opts.sparseSize);
  if (opts.noCreate) args.push('-n');
  if (opts.forceShare) args.push('-U');
  args.push(src, dest);
  const onStdout = opts.onProgress ? progressParser(opts.onProgress) : undefined;
  await run(args, { ...opts, onStdout });
}

/**
 * A stdout listener for `qemu-img -p`: it prints "    (45.20/100%)\r" repeatedly. Chunks
 * can split a record, so the tail after the last ')' is kept for the next chunk.
 */
export function progressParser(onProgress: (percent: number) => void): (chunk: string) => void {
  let tail = '';
  let last = -1;
  return (chunk) => {
    const text = tail + chunk;
    const re = /\((\d+(?:\.\d+)?)\/100%\)/g;
    let m: RegExpExecArray | null;
    let end = 0;
    while ((m = re.exec(text)) !== null) {
      end = re.lastIndex;
      const p = Math.min(100, Math.max(0, Number(m[1])));
      if (p !== last) {
        last = p;
        onProgress(p);
      }
    }
    tail = text.slice(end).slice(-64);
  };
}

export interface CreateOptions extends RunOptions {
  format?: DiskFormat | string;
  /** Virtual size in bytes; may be omitted with a backing file (then it inherits the backing size). */
  size?: number;
  /** Linked clone: the new image reads unwritten clusters from this file. */
  backingFile?: string;
  /** Format of the backing file (-F); required whenever backingFile is set so nothing is probed. */
  backingFormat?: DiskFormat | string;
  /** -u: do not open the backing file (it may be locked by a running QEMU); then size is required. */
  unsafeBacking?: boolean;
  options?: Record<string, string>;
}

/** `qemu-img create -f qcow2 [-b backing -F fmt] [-o ...] path [size]`. */
export async function create(path: string, opts: CreateOptions): Promise<void> {
  const args = ['create', '-q', '-f', opts.format ?? 'qcow2'];
  if (opts.backingFile !== undefined) {
    if (!opts.backingFormat)
      throw new QemuImgError(['create'], null, '', 'qemu-img create with a backing file needs backingFormat, so the backing file is never probed');
    args.push('-b', opts.backingFile, '-F', opts.backingFormat);
    if (opts.unsafeBacking) args.push('-u');
  }
  const o = optionString(opts.options);
  if (o) args.push('-o', o);
  args.push(path);
  if (opts.size !== undefined) args.push(String(opts.size));
  await run(args, opts);
}

export interface ResizeOptions extends RunOptions {
  format?: DiskFormat | string;
  /** Allow making the image smaller (qemu-img refuses without it, because data is lost). */
  shrink?: boolean;
  preallocation?: 'off' | 'metadata' | 'falloc' | 'full';
}

/** `qemu-img resize -f fmt [--shrink] path size` (size in bytes, absolute). */
export async function resize(path: string, size: number, opts: ResizeOptions = {}): Promise<void> {
  const args = ['resize', '-q'];
  if (opts.format) args.push('-f', opts.format);
  if (opts.shrink) args.push('--shrink');
  if (opts.preallocation) args.push(`--preallocation=${opts.preallocation}`);
  args.push(path, String(size));
  await run(args, opts);
}

export interface CheckResult {
  /** 0 clean, 2 corruptions found, 3 only leaked clusters (harmless: wasted space). */
  exitCode: number;
  corruptions: number;
  leaks: number;
  checkErrors: number;
  raw: Record<string, unknown>;
}

export interface CheckOptions extends RunOptions {
  format?: DiskFormat | string;
  forceShare?: boolean;
  untrusted?: boolean;
}

/**
 * `qemu-img check --output=json`. Exit codes 2 (corrupt) and 3 (leaks) are results, not
 * failures, so they come back in CheckResult; 1 and 63 (cannot check) throw.
 */
export async function check(path: string, opts: CheckOptions = {}): Promise<CheckResult> {
  const args = ['check', '--output=json'];
  if (opts.format) args.push('-f', opts.format);
  if (opts.forceShare) args.push('-U');
  args.push(path);
  const r = await run(args, { ...opts, okExitCodes: [0, 2, 3], limited: opts.untrusted });
  let raw: Record<string, unknown> = {};
  try {
    raw = JSON.parse(r.stdout) as Record<string, unknown>;
  } catch {
    // qemu-img check prints nothing parseable for some errors; the exit code still tells.
  }
  return {
    exitCode: r.exitCode,
    corruptions: Number(raw.corruptions ?? 0),
    leaks: Number(raw.leaks ?? 0),
    checkErrors: Number(raw['check-errors'] ?? 0),
    raw,
  };
}

export interface CompareOptions extends RunOptions {
  formatA?: DiskFormat | string;
  formatB?: DiskFormat | string;
  /** -s: images of different sizes are different (otherwise the tail must be zeros). */
  strict?: boolean;
}

/** `qemu-img compare`: identical (exit 0) or not (exit 1, with qemu-img's reason). */
export async function compare(a: string, b: string, opts: CompareOptions = {}): Promise<{ identical: boolean; message: string }> {
  const args = ['compare'];
  if (opts.formatA) args.push('-f', opts.formatA);
  if (opts.formatB) args.push('-F', opts.formatB);
  if (opts.strict) args.push('-s');
  args.push(a, b);
  const r = await run(args, { ...opts, okExitCodes: [0, 1] });
  return { identical: r.exitCode === 0, message: r.stdout.trim() };
}

function optionString(options: Record<string, string> | undefined): string {
  if (!options) return '';
  // qemu's option syntax escapes a comma in a value by doubling it.
  return Object.entries(options)
    .map(([k, v]) => `${k}=${v.replaceAll(',', ',,')}`)
    .join(',');
}

const PRLIMIT = '/usr/bin/prlimit';
const hasPrlimit = existsSync(PRLIMIT);

interface InternalRun extends RunOptions {
  okExitCodes?: number[];
  onStdout?: (chunk: string) => void;
  limited?: boolean;
}

/** Runs qemu-img with argv `args`; resolves with its output or throws QemuImgError. */
async function run(args: string[], opts: InternalRun): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  const ok = opts.okExitCodes ?? [0];
  let cmd = 'qemu-img';
  let argv = args;
  if (opts.limited && hasPrlimit) {
    cmd = PRLIMIT;
    argv = [`--as=${1 << 30}`, '--cpu=30', '--', 'qemu-img', ...args];
  }
  if (opts.signal?.aborted) throw new QemuImgError(args, null, '', `qemu-img ${args[0]} not started: aborted`, { cause: opts.signal.reason });
  return new Promise((resolve, reject) => {
    // LC_ALL=C so error text (which we surface) is stable English.
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    let stdout = '';
    let stderr = '';
    let why: string | undefined;
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (c: string) => {
      if (opts.onStdout) opts.onStdout(c);
      else if (stdout.length < 16 << 20) stdout += c;
    });
    child.stderr.on('data', (c: string) => {
      if (stderr.length < 64 << 10) stderr += c;
    });
    const kill = (reason: string) => {
      why ??= reason;
      child.kill('SIGKILL');
    };
    const onAbort = () => kill('aborted');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    const timer = opts.timeoutMs ? setTimeout(() => kill(`timed out after ${opts.timeoutMs} ms`), opts.timeoutMs) : undefined;
    const done = () => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
    };
    child.on('error', (e: NodeJS.ErrnoException) => {
      done();
      const msg = e.code === 'ENOENT' ? `${cmd} is not installed: install the Debian package qemu-utils` : `cannot start ${cmd}: ${e.message}`;
      reject(new QemuImgError(args, null, '', msg, { cause: e }));
    });
    child.on('close', (code, signal) => {
      done();
      if (why) return reject(new QemuImgError(args, code, stderr, `qemu-img ${args[0]} ${why}`, { cause: opts.signal?.reason }));
      if (code !== null && ok.includes(code)) return resolve({ stdout, stderr, exitCode: code });
      if (signal === 'SIGXCPU' || signal === 'SIGKILL') {
        return reject(
          new QemuImgError(
            args,
            code,
            stderr,
            `qemu-img ${args[0]} was stopped by its resource limit (${signal}): the image makes qemu-img use too much CPU or memory`,
          ),
        );
      }
      reject(new QemuImgError(args, code, stderr));
    });
  });
}

export interface RebaseOptions extends RunOptions {
  format?: DiskFormat | string;
  backingFormat?: DiskFormat | string;
}

/**
 * `qemu-img rebase -f fmt -b backing -F fmt path` in safe mode: copies into `path` every
 * cluster whose content differs between the old and the new backing chain, so what the guest
 * sees does not change. `backing` '' makes the image stand alone. Takes the image's write lock:
 * it fails while a QEMU has the image open.
 */
export async function rebase(path: string, backing: string, opts: RebaseOptions = {}): Promise<void> {
  const args = ['rebase', '-f', opts.format ?? 'qcow2', '-b', backing];
  if (backing !== '') args.push('-F', opts.backingFormat ?? 'qcow2');
  args.push(path);
  await run(args, opts);
}
