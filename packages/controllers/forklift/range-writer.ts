/**
 * Writes byte ranges of a source disk into a target volume at their offsets, through the target
 * volume's NBD export with TLS-PSK (the agent's warm export, packages/agent/vms/warm-copy.ts).
 * Used by vSphere warm rounds (./vsphere/warm.ts): QueryChangedDiskAreas says which ranges
 * changed, an HTTP Range GET reads each, and `qemu-io` writes them. Ranges are read in chunks of
 * at most 4 MiB into files of a private temporary directory, and one `qemu-io` process writes a
 * batch of up to 64 MiB (`write -s FILE OFFSET LEN` per chunk), so a round of many small areas
 * does not start a process per area and memory stays bounded.
 */
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { writeQemuTlsDir } from '@vessel/tls';

/** A range `[start, start + length)` of the disk. */
export interface ByteRange {
  start: number;
  length: number;
}

/** The target's NBD export, as the agent answers it (`vessel.io/warm-export-status`). */
export interface NbdTarget {
  /** `host:port` (`[v6]:port`). */
  address: string;
  export: string;
  identity: string;
  /** The TLS-PSK key, hex. */
  key: string;
}

export class RangeWriteError extends Error {
  constructor(
    /** RangeReadFailed (the source), RangeWriteFailed (qemu-io or the export). */
    readonly code: 'RangeReadFailed' | 'RangeWriteFailed',
    message: string,
  ) {
    super(message);
    this.name = 'RangeWriteError';
  }
}

const CHUNK = 4 * 1024 * 1024;
const BATCH = 64 * 1024 * 1024;

function hostPort(address: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(address) ?? /^([^:]+):(\d+)$/.exec(address);
  if (!m) throw new RangeWriteError('RangeWriteFailed', `not host:port: ${address}`);
  return { host: m[1], port: Number(m[2]) };
}

/**
 * What may go into qemu-io's option strings: no ',' or '=' that would add an option. The values
 * come from an agent's answer and a Secret in the tenant's namespace, so they are checked here.
 */
const OPTION_VALUE = /^[\w.:-]+$/;

/** The ranges cut into chunks of at most `max` bytes. */
export function chunks(ranges: readonly ByteRange[], max = CHUNK): ByteRange[] {
  const out: ByteRange[] = [];
  for (const r of ranges) for (let s = r.start; s < r.start + r.length; s += max) out.push({ start: s, length: Math.min(max, r.start + r.length - s) });
  return out;
}

function qemuIo(args: string[], bin: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const keep = (d: Buffer) => (out = (out + d.toString('utf8')).slice(-2000));
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('error', (e) => reject(new RangeWriteError('RangeWriteFailed', `${bin}: ${e.message}`)));
    child.on('exit', (code) => {
      // qemu-io reports a failed command on its output, whatever its exit code.
      if (code === 0 && !/failed|error/i.test(out)) resolve();
      else reject(new RangeWriteError('RangeWriteFailed', `qemu-io: ${out.trim() || `exit ${code}`}`));
    });
  });
}

/**
 * Reads each range with `read(start, length)` (a stream of exactly those bytes) and writes it at
 * the same offset of `target`. Resolves with the bytes written; `progress(done, total)` after
 * each batch; `checkpoint` may throw to stop between chunks.
 */
export async function writeRanges(
  target: NbdTarget,
  ranges: readonly ByteRange[],
  read: (start: number, length: number) => Promise<Readable>,
  opts: { progress?: (done: number, total: number) => void; checkpoint?: () => void; qemuIo?: string; tmp?: string } = {},
): Promise<number> {
  const total = ranges.reduce((a, r) => a + r.length, 0);
  if (!total) return 0;
  const { host, port } = hostPort(target.address);
  const dir = await mkdtemp(join(opts.tmp ?? tmpdir(), 'vessel-ranges-'));
  let done = 0;
  try {
    for (const [what, v] of [
      ['host', host],
      ['export', target.export],
      ['identity', target.identity],
    ] as const)
      if (!OPTION_VALUE.test(v)) throw new RangeWriteError('RangeWriteFailed', `the export's ${what} ${JSON.stringify(v)} is not a plain name`);
    await writeQemuTlsDir(dir, { type: 'psk', keys: [{ identity: target.identity, key: target.key }] }).catch((e: Error) => {
      throw new RangeWriteError('RangeWriteFailed', `the export's PSK: ${e.message}`);
    });
    const base = [
      '--object',
      `tls-creds-psk,id=tls0,endpoint=client,dir=${dir},username=${target.identity}`,
      '--image-opts',
      `driver=nbd,server.type=inet,server.host=${host},server.port=${port},export=${target.export},tls-creds=tls0`,
    ];
    let batch: string[] = [];
    let batchBytes = 0;
    const flush = async () => {
      if (!batch.length) return;
      await qemuIo([...base, ...batch, '-c', 'flush'], opts.qemuIo ?? 'qemu-io');
      done += batchBytes;
      batch = [];
      batchBytes = 0;
      await rm(join(dir, 'c'), { recursive: true, force: true });
      await mkdir(join(dir, 'c'), { mode: 0o700 });
      opts.progress?.(done, total);
    };
    await mkdir(join(dir, 'c'), { mode: 0o700 });
    for (const c of chunks(ranges)) {
      opts.checkpoint?.();
      const file = join(dir, 'c', String(c.start));
      try {
        await pipeline(await read(c.start, c.length), createWriteStream(file, { mode: 0o600 }));
      } catch (e) {
        throw new RangeWriteError('RangeReadFailed', `reading ${c.length} bytes at ${c.start}: ${e instanceof Error ? e.message : String(e)}`);
      }
      // qemu-io repeats a short file to fill the length: a short read would write wrong bytes.
      const got = (await stat(file)).size;
      if (got !== c.length) throw new RangeWriteError('RangeReadFailed', `${got} bytes at ${c.start}, ${c.length} asked`);
      batch.push('-c', `write -q -s ${file} ${c.start} ${c.length}`);
      batchBytes += c.length;
      if (batchBytes >= BATCH) await flush();
    }
    await flush();
    return done;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
