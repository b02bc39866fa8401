/**
 * Disk import: the data plane behind DataVolume sources (http, upload, registry, pvc clone,
 * blank). Bytes are streamed into a temporary file next to the destination (decompressing
 * gz/xz and hashing on the fly), the format is found from the content (never the name),
 * hostile images are refused before qemu-img opens anything they point to, the image is
 * converted to qcow2 in a second temporary file, verified, fsynced and published by
 * rename. Every failure or abort removes every temporary file, so the destination either
 * holds the complete verified disk or does not exist.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream, fdatasync, type BigIntStats, type WriteStream } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { basename, dirname } from 'node:path';
import { Duplex, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { checkedRequestOptions, type EgressPolicy } from './egress.ts';
import { ImportError, QemuImgError, firstLine } from './errors.ts';
import * as qemuImg from './qemu-img.ts';
import type { DiskFormat, ImageInfo } from './qemu-img.ts';

export type ImportSource =
  /** Download over HTTP(S). caPem: extra CA bundle (CDI's certConfigMap), PEM text. */
  | { kind: 'http'; url: string; caPem?: string; headers?: Record<string, string> }
  /** A file already on this node (an upload that was stored, a PVC to clone, a registry layer). */
  | { kind: 'file'; path: string }
  /** Bytes arriving on a stream (the upload proxy). sizeHint, if known, drives progress. */
  | { kind: 'stream'; stream: Readable; sizeHint?: number }
  /** An empty qcow2 of `size` bytes. */
  | { kind: 'blank'; size: number }
  /**
   * `size` bytes at `offset` of a file on this node, read in place (a disk inside an OVA's tar,
   * ./ova-source.ts): converted through qemu-img's raw offset/size window, hashed meanwhile when
   * a digest is given, never copied first.
   */
  | { kind: 'range'; path: string; offset: number; size: number; digest?: { algorithm: string; hex: string } };

export type ImportPhase = 'download' | 'check' | 'convert' | 'publish';

export interface ImportOptions {
  source: ImportSource;
  /** Final path of the qcow2 disk. Its directory must exist; temporary files go there too. */
  dest: string;
  /** The claim's capacity in bytes: images with a larger virtual size are refused. */
  maxVirtualSize: number;
  /** CDI-style "sha256:<hex>" (also sha512:, sha1:, md5:), of the bytes as transferred. */
  checksum?: string;
  /** Overall progress 0..100 (download, then conversion), never decreasing. */
  onProgress?: (percent: number, phase: ImportPhase) => void;
  signal?: AbortSignal;
  /** Timeout for a stall of the HTTP transfer (no bytes for this long), ms. Default 60 s. */
  idleTimeoutMs?: number;
  /**
   * Default true: a transferred qcow2 that passed every check and is plain (compat 1.1, no
   * snapshots, no bitmaps, no leaked clusters, clean) is published as received instead of
   * rewritten by qemu-img convert, which would produce an equivalent file at twice the disk
   * writes. false always converts (e.g. to drop compressed clusters). File sources are
   * always converted, since the source file is not ours to move.
   */
  adoptPlainQcow2?: boolean;
  /**
   * Which addresses an http source (and its redirects) may be fetched from; default: no
   * loopback, link-local, node or API server addresses (see egress.ts).
   */
  egress?: EgressPolicy;
}

export type Compression = 'none' | 'gzip' | 'xz';

export interface ImportResult {
  dest: string;
  /** Format of the image that was imported (after decompression); 'blank' for blank disks. */
  sourceFormat: DiskFormat | 'blank';
  compression: Compression;
  virtualSize: number;
  /** Bytes received from the source (compressed size for gz/xz); 0 for blank. */
  bytesTransferred: number;
  /** Virtual size of the published qcow2, as qemu-img read it before publishing (so a caller need not run it again). */
  destVirtualSize: number;
  /** The digest computed while streaming, in the checksum's algorithm ("sha256:..."), when one was asked for. */
  checksum?: string;
  /** false when a plain qcow2 was published as received (see ImportOptions.adoptPlainQcow2). */
  converted: boolean;
}

/** CDI's DataVolume status.progress text for a 0..100 number, e.g. "45.20%". */
export function formatProgress(percent: number): string {
  const p = Number.isFinite(percent) ? Math.min(100, Math.max(0, percent)) : 0;
  return `${p.toFixed(2)}%`;
}

/** Share of the 0..100 progress given to the transfer when there is one (the rest is conversion). */
const DOWNLOAD_SHARE = 50;
/**
 * The most bytes an image for a claim of `maxVirtualSize` may take as a file, counted while
 * it streams (decompressed bytes for gz/xz, bytes as sent for uploads): the claim plus what
 * an image format adds. qcow2 adds about 0.02 % (L2 and refcount tables with 64 KiB
 * clusters) and 2 % with 512-byte clusters; vhdx a few MiB of headers, log and metadata;
 * vmdk's grain tables less. S/16 + 8 MiB covers them with room to spare; anything bigger
 * is stopped at that point instead of after the whole transfer.
 */
export function maxImageBytes(maxVirtualSize: number): number {
  return maxVirtualSize + Math.ceil(maxVirtualSize / 16) + (8 << 20);
}
const DIGESTS: Record<string, number> = { md5: 32, sha1: 40, sha256: 64, sha512: 128 };

/**
 * Imports one disk to `dest` as qcow2. Throws ImportError (see its `code`) and leaves
 * nothing behind on any failure, refusal or abort.
 */
export async function importDisk(opts: ImportOptions): Promise<ImportResult> {
  const { source, dest, signal } = opts;
  const wantSum = parseChecksum(opts.checksum);
  if (!Number.isSafeInteger(opts.maxVirtualSize) || opts.maxVirtualSize <= 0) {
    throw new ImportError('InvalidArgument', `maxVirtualSize must be a positive number of bytes, not ${opts.maxVirtualSize}`);
  }
  const tag = randomBytes(6).toString('hex');
  const tmpOut = `${dest}.tmp-${tag}`;
  const tmpIn = `${dest}.part-${tag}`;
  const temps = [tmpIn, tmpOut];
  const progress = monotonic(opts.onProgress);
  try {
    throwIfAborted(signal);
    if (source.kind === 'blank') {
      if (!Number.isSafeInteger(source.size) || source.size <= 0)
        throw new ImportError('InvalidArgument', `a blank disk needs a positive size in bytes, not ${source.size}`);
      if (source.size > opts.maxVirtualSize) throw tooLarge(source.size, opts.maxVirtualSize);
      await qemuImg.create(tmpOut, { format: 'qcow2', size: source.size, signal });
      const out = await verifyOutput(tmpOut, source.size, opts.maxVirtualSize, signal);
      await publish(tmpOut, dest);
      progress(100, 'publish');
      return {
        dest,
        sourceFormat: 'blank',
        compression: 'none',
        virtualSize: out.virtualSize,
        destVirtualSize: out.virtualSize,
        bytesTransferred: 0,
        converted: false,
      };
    }

    if (source.kind === 'range') return await importRange(source, opts, tmpOut, progress);

    // 1. Get the (decompressed) image into a local file.
    let input: string;
    let received: Received;
    if (source.kind === 'file') {
      received = await receiveFile(source.path, tmpIn, opts, wantSum, progress);
      input = received.compression === 'none' ? source.path : tmpIn;
    } else {
      const body = source.kind === 'http' ? await httpGet(source, opts) : { stream: source.stream, length: source.sizeHint };
      received = await receive(body.stream, body.length, tmpIn, opts, wantSum, progress, source.kind === 'http');
      input = tmpIn;
    }
    if (wantSum && received.digest !== wantSum.hex) {
      throw new ImportError(
        'ChecksumMismatch',
        `the ${wantSum.algo} checksum of the downloaded bytes is ${received.digest}, not ${wantSum.hex} as the DataVolume says: check the checksum, or the URL if it serves a different file now`,
      );
    }
    throwIfAborted(signal);

    // 2. Find the format from the content and refuse anything hostile before qemu-img opens it.
    // An uncompressed file is read in place: no transfer phase, conversion is all the progress.
    const base = source.kind !== 'file' || received.compression !== 'none' ? DOWNLOAD_SHARE : 0;
    progress(base, 'check');
    const format = await sniffFormat(input);
    const srcInfo = await inspect(input, format, opts.maxVirtualSize, signal);

    // 3a. A plain qcow2 that arrived in our temp file is already what convert would write:
    // publish it as it is (half the disk writes; its writeback overlapped the download).
    if (format === 'qcow2' && input === tmpIn && opts.adoptPlainQcow2 !== false && isPlainQcow2(srcInfo)) {
      const out = await verifyOutput(tmpIn, srcInfo.virtualSize, opts.maxVirtualSize, signal);
      await publish(tmpIn, dest);
      progress(100, 'publish');
      return {
        dest,
        sourceFormat: format,
        compression: received.compression,
        virtualSize: srcInfo.virtualSize,
        destVirtualSize: out.virtualSize,
        bytesTransferred: received.bytes,
        checksum: wantSum ? `${wantSum.algo}:${received.digest}` : undefined,
        converted: false,
      };
    }

    // 3b. Convert to qcow2 next to dest, verify, publish.
    await convertDurably(input, tmpOut, format, signal, (p) => progress(base + (p * (99 - base)) / 100, 'convert'));
    if (input === tmpIn) await rm(tmpIn, { force: true }); // free the space before the fsync
    const out = await verifyOutput(tmpOut, srcInfo.virtualSize, opts.maxVirtualSize, signal);
    await publish(tmpOut, dest);
    progress(100, 'publish');
    return {
      dest,
      sourceFormat: format,
      compression: received.compression,
      virtualSize: srcInfo.virtualSize,
      destVirtualSize: out.virtualSize,
      bytesTransferred: received.bytes,
      checksum: wantSum ? `${wantSum.algo}:${received.digest}` : undefined,
      converted: true,
    };
  } catch (e) {
    // Cleanup must not replace the import's own error; leftovers are swept at the next agent start.
    await Promise.all(temps.map((t) => rm(t, { force: true }).catch(() => undefined)));
    throw asImportError(e, signal, 'the import failed');
  } finally {
    await rm(tmpIn, { force: true }).catch(() => undefined); // as above: never masks the result
  }
}

/**
 * A file's byte range as qemu-img's source: the format's driver over a raw driver's offset/size
 * window over the file, so qemu-img reads nothing outside the range (QEMU's raw format options).
 */
export function rangeFilename(path: string, offset: number, size: number, format: DiskFormat): string {
  const window = { driver: 'raw', offset, size, file: { driver: 'file', filename: path } };
  return `json:${JSON.stringify(format === 'raw' ? window : { driver: format, file: window })}`;
}

/**
 * The range source (issue 14): checks, converts and publishes as importDisk does, with the
 * digest computed by a second read of the range on a niced thread while qemu-img converts (the
 * page cache serves one of the two), compared before anything is published; the file must not
 * change meanwhile.
 */
async function importRange(source: Extract<ImportSource, { kind: 'range' }>, opts: ImportOptions, tmpOut: string, progress: Progress): Promise<ImportResult> {
  const { path, offset, size, digest } = source;
  const { signal } = opts;
  const before = await stat(path, { bigint: true });
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(size) || size <= 0 || BigInt(offset + size) > before.size)
    throw new ImportError('InvalidArgument', `the range ${offset}+${size} is not inside ${basename(path)} (${before.size} bytes)`);
  if (digest && (DIGESTS[digest.algorithm] === undefined || DIGESTS[digest.algorithm] !== digest.hex.length))
    throw new ImportError('InvalidArgument', `"${digest.algorithm}:${digest.hex}" is not a digest Vessel checks`);
  // Niced while qemu-img runs, so it takes only the CPU qemu-img leaves (issue 14: alongside at
  // full priority it cost ~1 s of a 4-5 s import on two cores); back to normal once qemu-img exits.
  const hashing = digest ? backgroundHash(path, offset, size, digest.algorithm, signal) : undefined;
  try {
    return await importRangeHashed(source, opts, tmpOut, progress, hashing, before);
  } finally {
    hashing?.stop();
  }
}

async function importRangeHashed(
  source: Extract<ImportSource, { kind: 'range' }>,
  opts: ImportOptions,
  tmpOut: string,
  progress: Progress,
  hashing: BackgroundHash | undefined,
  before: BigIntStats,
): Promise<ImportResult> {
  const { path, offset, size, digest } = source;
  const { signal } = opts;
  progress(0, 'check');
  const format = await sniffFormat(path, { offset, size });
  const input = rangeFilename(path, offset, size, format);
  const srcInfo = await inspect(input, format, opts.maxVirtualSize, signal);
  // Through the page cache, as a plain `qemu-img convert`: for a streamOptimized VMDK -t none
  // (O_DIRECT, convertDurably) took 2-3x as long here (issue 14, docs/forklift.md), since each
  // deflated grain's write waited for the disk. The output is flushed while qemu-img writes it,
  // so publish's fsync finds little left to write (it took 0.3-0.45 s for 1 GiB at the end).
  const converting = qemuImg.convert(input, tmpOut, { srcFormat: format, outFormat: 'qcow2', signal, onProgress: (p) => progress((p * 99) / 100, 'convert') });
  try {
    await Promise.all([converting, flushWhile(tmpOut, converting)]);
  } catch (e) {
    throw asImportError(e, signal, `converting the ${format} image to qcow2 failed`);
  }
  if (digest && hashing) {
    hashing.normalPriority();
    const got = await hashing.digest;
    if (got !== digest.hex.toLowerCase())
      throw new ImportError('ChecksumMismatch', `the ${digest.algorithm} of the disk's bytes is ${got}, its package's manifest says ${digest.hex}`);
  }
  const after = await stat(path, { bigint: true });
  if (after.ino !== before.ino || after.size !== before.size || after.mtimeNs !== before.mtimeNs || after.ctimeNs !== before.ctimeNs)
    throw new ImportError('IOError', `${basename(path)} changed while it was read: import it again`);
  const out = await verifyOutput(tmpOut, srcInfo.virtualSize, opts.maxVirtualSize, signal);
  await publish(tmpOut, opts.dest);
  progress(100, 'publish');
  return {
    dest: opts.dest,
    sourceFormat: format,
    compression: 'none',
    virtualSize: srcInfo.virtualSize,
    destVirtualSize: out.virtualSize,
    bytesTransferred: size,
    checksum: digest ? `${digest.algorithm}:${digest.hex.toLowerCase()}` : undefined,
    converted: true,
  };
}

/** How often flushWhile writes back what qemu-img wrote so far. */
const FLUSH_EVERY_MS = 200;

/**
 * fdatasyncs `path` every FLUSH_EVERY_MS until `work` settles, so the disk writes overlap the
 * (CPU-bound) conversion instead of all waiting for the final fsync. A flush's error is left
 * to that final fsync (publish), which reports it; the file not existing yet is normal.
 */
async function flushWhile(path: string, work: Promise<unknown>): Promise<void> {
  let settled = false;
  const done = work.then(
    () => (settled = true),
    () => (settled = true),
  );
  let fh: FileHandle | undefined;
  try {
    while (!settled) {
      await Promise.race([done, new Promise((r) => setTimeout(r, FLUSH_EVERY_MS))]);
      if (settled) break;
      // Read-only: this never creates the file; fdatasync flushes the inode's pages whoever wrote them.
      fh ??= await open(path, 'r').catch(() => undefined);
      await fh?.datasync().catch(() => undefined);
    }
  } finally {
    await fh?.close().catch(() => undefined);
  }
}

interface BackgroundHash {
  digest: Promise<string>;
  /** Ends the thread's nice (qemu-img is done: nothing left to yield to). */
  normalPriority(): void;
  /** Stops the thread if it still runs (the import failed or was aborted). */
  stop(): void;
}

/** Nice of the hash thread while qemu-img runs (CFS weight 110 against 1024). */
const HASH_NICE = 10;

/**
 * The hash thread's code: plain JavaScript (eval), so it runs the same under tsx and in the built
 * CLI. Linux's setpriority on a thread id renices that thread only (its id from
 * /proc/thread-self); only root may raise it back, so others are never niced.
 */
const HASH_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { readlinkSync } = require('node:fs');
const { open } = require('node:fs/promises');
const { setPriority } = require('node:os');
let tid = 0;
try { tid = Number(readlinkSync('/proc/thread-self').split('/').pop()) || 0; } catch {}
const renice = (n) => { try { if (tid) setPriority(tid, n); } catch {} };
parentPort.on('message', (n) => renice(n));
(async () => {
  const { path, offset, size, algorithm, nice } = workerData;
  if (nice) renice(nice);
  const h = createHash(algorithm);
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let pos = offset, left = size; left > 0; ) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, left), pos);
      if (bytesRead === 0) throw new Error('the file ended before the range did');
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
      left -= bytesRead;
    }
  } finally {
    await fh.close();
  }
  parentPort.postMessage({ hex: h.digest('hex') });
})().catch((e) => parentPort.postMessage({ error: String((e && e.message) || e) }));
`;

/** Hashes `size` bytes at `offset` of `path` on a worker thread, niced (as root) until normalPriority(). */
function backgroundHash(path: string, offset: number, size: number, algorithm: string, signal: AbortSignal | undefined): BackgroundHash {
  const nice = process.getuid?.() === 0 ? HASH_NICE : 0;
  const worker = new Worker(HASH_WORKER, { eval: true, workerData: { path, offset, size, algorithm, nice } });
  const stop = () => void worker.terminate();
  signal?.addEventListener('abort', stop, { once: true });
  const digest = new Promise<string>((resolve, reject) => {
    worker.once('message', (m: { hex?: string; error?: string }) =>
      m.hex ? resolve(m.hex) : reject(new ImportError('IOError', `reading the disk for its digest failed: ${m.error ?? 'no digest'}`)),
    );
    worker.once('error', reject);
    worker.once('exit', () => reject(signal?.aborted ? aborted(signal) : new ImportError('IOError', 'the digest thread ended early')));
  }).finally(() => signal?.removeEventListener('abort', stop));
  digest.catch(() => undefined); // awaited after the conversion; a failure meanwhile must not go unhandled
  return { digest, normalPriority: () => worker.postMessage(0), stop };
}

// ---------------------------------------------------------------------------------------
// Transfer

interface Received {
  bytes: number;
  compression: Compression;
  digest?: string;
}
type Progress = (percent: number, phase: ImportPhase) => void;

function parseChecksum(sum: string | undefined): { algo: string; hex: string } | undefined {
  if (sum === undefined || sum === '') return undefined;
  const m = /^([a-z0-9]+):([0-9a-fA-F]+)$/.exec(sum.trim());
  if (!m || DIGESTS[m[1]] === undefined || DIGESTS[m[1]] !== m[2].length) {
    throw new ImportError('InvalidArgument', `checksum "${sum}" is not of the form sha256:<64 hex digits> (sha512:, sha1: and md5: work too)`);
  }
  return { algo: m[1], hex: m[2].toLowerCase() };
}

/** Progress that never goes backwards and is reported at most once per 0.01 %. */
function monotonic(cb: ImportOptions['onProgress']): Progress {
  let last = -1;
  return (p, phase) => {
    if (!cb) return;
    const v = Math.floor(Math.min(100, Math.max(0, p)) * 100) / 100;
    if (v <= last && !(v === 100 && last < 100)) return;
    last = v;
    cb(v, phase);
  };
}

/** Which decompressor the first bytes call for (magic numbers, not file names). */
export function detectCompression(head: Buffer): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 6 && head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  return 'none';
}

/**
 * Streams `body` into `tmpIn`: counts and hashes the bytes as transferred, decompresses
 * gz/xz, and caps the written size so a decompression bomb cannot fill the disk.
 */
async function receive(
  body: Readable,
  length: number | undefined,
  tmpIn: string,
  opts: ImportOptions,
  wantSum: { algo: string } | undefined,
  progress: Progress,
  isHttp: boolean,
): Promise<Received> {
  const cap = maxImageBytes(opts.maxVirtualSize);
  if (length !== undefined && length > cap) {
    body.destroy();
    throw streamTooLarge(length, opts.maxVirtualSize, 'the download is');
  }
  const hash: Hash | undefined = wantSum ? createHash(wantSum.algo) : undefined;
  let bytes = 0;
  const it = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const signal = opts.signal;
  // Read until the magic numbers can be told apart (xz needs 6 bytes).
  const headParts: Buffer[] = [];
  let headLen = 0;
  let ended = false;
  try {
    while (headLen < 6) {
      const r = await it.next();
      if (r.done) {
        ended = true;
        break;
      }
      headParts.push(r.value);
      headLen += r.value.length;
    }
  } catch (e) {
    throw transferError(e, bytes + headLen, length, signal, isHttp);
  }
  const head = Buffer.concat(headParts);
  const compression = detectCompression(head);
  const account = (c: Buffer) => {
    bytes += c.length;
    hash?.update(c);
    if (length) progress((Math.min(bytes, length) / length) * DOWNLOAD_SHARE, 'download');
    if (compression === 'none' && bytes > cap) throw streamTooLarge(bytes, opts.maxVirtualSize, 'the download was stopped at');
  };
  async function* source(): AsyncGenerator<Buffer> {
    if (head.length) {
      account(head);
      yield head;
    }
    if (ended) return;
    for (;;) {
      const r = await it.next();
      if (r.done) return;
      account(r.value);
      yield r.value;
    }
  }
  // Caps the decompressed output (the compressed count is capped in `account`).
  let written = 0;
  async function* capped(src: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    for await (const c of src) {
      written += c.length;
      if (written > cap) throw streamTooLarge(written, opts.maxVirtualSize, 'the decompressed image was stopped at');
      yield c;
    }
  }
  // A 16 MiB buffer lets many socket reads pile up into one writev while a write is in flight
  // and keeps the response from pausing on every chunk: 512 MiB over loopback took 1.1-1.6 s
  // with the 16 KiB default, 0.7-0.9 s with this (curl: 0.5-0.7 s).
  const out = createWriteStream(tmpIn, { flags: 'wx', highWaterMark: 16 << 20 });
  // A qcow2 arriving uncompressed may be published as it is (adoptPlainQcow2): flushing it
  // while it downloads overlaps the writeback with the transfer, so the fsync before the
  // rename has little left to do. Other inputs are temporary and never flushed.
  const flusher =
    compression === 'none' && head.subarray(0, 4).toString('latin1') === 'QFI\xfb' && opts.adoptPlainQcow2 !== false ? backgroundFlush(out) : undefined;
  try {
    if (compression === 'none') {
      await pipeline(source, out, { signal });
    } else if (compression === 'gzip') {
      await pipeline(source, createGunzip({ chunkSize: 1 << 20 }), capped, out, { signal });
    } else {
      await unxz(source, capped, out, signal);
    }
  } catch (e) {
    body.destroy();
    throw transferError(e, bytes, length, signal, isHttp);
  } finally {
    await flusher?.stop();
  }
  if (length !== undefined && bytes < length) {
    throw new ImportError('Truncated', `the transfer ended after ${bytes} of ${length} bytes: the server closed the connection early; retry the import`);
  }
  return { bytes, compression, digest: hash?.digest('hex') };
}

/** fdatasync of a file being written, every 250 ms, one at a time; stop() waits for the last one. */
function backgroundFlush(out: WriteStream): { stop: () => Promise<void> } {
  let inflight: Promise<void> | undefined;
  const timer = setInterval(() => {
    // @types/node leaves WriteStream.fd out; node sets it once the file is open.
    const fd = (out as unknown as { fd: number | null }).fd;
    if (inflight || typeof fd !== 'number' || out.closed) return;
    inflight = new Promise<void>((resolve) => fdatasync(fd, () => resolve())).finally(() => {
      inflight = undefined;
    });
  }, 250);
  return {
    stop: async () => {
      clearInterval(timer);
      await inflight;
    },
  };
}

/** Decompresses xz through `xz -dc` (node has no xz); xz's exit status decides success. */
async function unxz(
  source: () => AsyncGenerator<Buffer>,
  capped: (s: AsyncIterable<Buffer>) => AsyncGenerator<Buffer>,
  out: Writable,
  signal: AbortSignal | undefined,
): Promise<void> {
  const child = spawn('xz', ['-dc', '-q', '--single-stream'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (c: string) => {
    if (stderr.length < 4096) stderr += c;
  });
  const exited = new Promise<number | null>((resolve, reject) => {
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(
        new ImportError(
          'UnsupportedFormat',
          e.code === 'ENOENT' ? 'the image is xz-compressed but xz is not installed: install the Debian package xz-utils' : `cannot start xz: ${e.message}`,
          { cause: e },
        ),
      ),
    );
    child.on('close', (code) => resolve(code));
  });
  const xz = Duplex.from({ writable: child.stdin, readable: child.stdout });
  try {
    await Promise.all([pipeline(source, xz, capped, out, { signal }), exited]);
  } catch (e) {
    child.kill('SIGKILL');
    const code = await exited.catch(() => null);
    if (e instanceof ImportError) throw e;
    if (code !== 0 && stderr) throw xzError(stderr, e);
    throw e;
  }
  const code = await exited;
  if (code !== 0) throw xzError(stderr);
}

function xzError(stderr: string, cause?: unknown): ImportError {
  const msg = stderr.trim().replace(/^xz:\s*(\(stdin\):\s*)?/, '');
  if (/unexpected end of input/i.test(msg)) {
    return new ImportError('Truncated', `the xz stream ends early (${msg}): the download or the file is incomplete; re-create or re-upload it`, { cause });
  }
  return new ImportError('Corrupt', `the xz data cannot be decompressed (${msg || 'xz failed'}): re-create or re-upload the image`, { cause });
}

/** A file source: hashed and decompressed when needed; an uncompressed file is read in place. */
async function receiveFile(path: string, tmpIn: string, opts: ImportOptions, wantSum: { algo: string } | undefined, progress: Progress): Promise<Received> {
  let size: number;
  const fh = await open(path, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new ImportError('InvalidArgument', `cannot read the source file ${path}: ${e.code ?? e.message}`, { cause: e });
  });
  const head = Buffer.alloc(6);
  try {
    size = (await fh.stat()).size;
    await fh.read(head, 0, 6, 0);
  } finally {
    await fh.close();
  }
  const compression = detectCompression(head);
  if (compression === 'none' && !wantSum) return { bytes: size, compression };
  if (compression === 'none') {
    // Only the checksum is needed: hash in place rather than copy.
    const hash = createHash(wantSum!.algo);
    await pipeline(
      createReadStream(path, { highWaterMark: 1 << 20 }),
      async (src: AsyncIterable<Buffer>) => {
        for await (const c of src) hash.update(c);
      },
      { signal: opts.signal },
    );
    return { bytes: size, compression, digest: hash.digest('hex') };
  }
  return receive(createReadStream(path, { highWaterMark: 1 << 20 }), size, tmpIn, opts, wantSum, progress, false);
}

/** Header names a Secret may not set: the request's framing and target are the importer's. */
const RESERVED_HEADERS = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'upgrade', 'te', 'trailer', 'proxy-authorization']);

/**
 * CDI's secretExtraHeaders: each value `Name: value` (or `Name:value`, as KubeVirt's export
 * token secret) is one request header. A value that is not that, a header name that is not an
 * HTTP token or is reserved, or a value with a line break: ImportError InvalidArgument naming `what`.
 */
export function parseExtraHeaders(values: readonly string[], what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of values) {
    const line = raw.replace(/\r?\n$/, '');
    const colon = line.indexOf(':');
    const name = colon > 0 ? line.slice(0, colon).trim() : '';
    const value = line.slice(colon + 1).trim();
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) || /[\r\n\0]/.test(value) || RESERVED_HEADERS.has(name.toLowerCase()))
      throw new ImportError('InvalidArgument', `${what}: each value must be one "Name: value" header (not a reserved one)`);
    out[name] = value;
  }
  return out;
}

/** GET with redirects (up to 5, like CDI's importer); returns the body stream and its length. */
async function httpGet(
  src: { url: string; caPem?: string; headers?: Record<string, string> },
  opts: ImportOptions,
): Promise<{ stream: Readable; length?: number }> {
  let url = src.url;
  let origin: string | undefined;
  for (let hop = 0; hop <= 5; hop++) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new ImportError('InvalidArgument', `"${url}" is not a valid URL`);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      throw new ImportError('InvalidArgument', `only http and https URLs can be imported, not ${parsed.protocol}`);
    }
    origin ??= parsed.origin;
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const lib = parsed.protocol === 'https:' ? https : http;
      // The connection (and TLS, with the certConfigMap's CA) is made by the egress check.
      const req = lib.get(
        parsed,
        {
          // The secretRef's credentials go only to the URL's own origin, not where it redirects.
          headers: { 'user-agent': 'vessel-importer', ...(parsed.origin === origin ? src.headers : {}) },
          signal: opts.signal,
          ...checkedRequestOptions(parsed, {
            policy: opts.egress,
            timeoutMs: opts.idleTimeoutMs ?? 60_000,
            signal: opts.signal,
            display: redact(parsed),
            tls: parsed.protocol === 'https:' ? (src.caPem ? { ca: src.caPem } : {}) : undefined,
          }),
        },
        resolve,
      );
      req.setTimeout(opts.idleTimeoutMs ?? 60_000, () =>
        req.destroy(
          new ImportError(
            'HttpError',
            `no data from ${parsed.host} for ${(opts.idleTimeoutMs ?? 60_000) / 1000} s: the server is stuck or unreachable; retry the import`,
          ),
        ),
      );
      req.on('error', (e) => {
        if (e instanceof ImportError) return reject(e);
        if (opts.signal?.aborted) return reject(aborted(opts.signal));
        reject(new ImportError('HttpError', `cannot download ${redact(parsed)}: ${e.message}${tlsHint(e)}`, { cause: e }));
      });
    });
    const status = res.statusCode ?? 0;
    if (status >= 300 && status < 400 && res.headers.location) {
      res.resume();
      url = new URL(res.headers.location, parsed).toString();
      continue;
    }
    if (status !== 200) {
      res.resume();
      throw new ImportError(
        'HttpError',
        `${redact(parsed)} answered HTTP ${status} ${res.statusMessage ?? ''}: check the URL and that the file is published there`.replace(' :', ':'),
      );
    }
    const cl = res.headers['content-length'];
    const length = cl !== undefined && /^\d+$/.test(cl) ? Number(cl) : undefined;
    return { stream: res, length };
  }
  throw new ImportError('HttpError', `${src.url} redirects more than 5 times: give the final URL`);
}

function redact(u: URL): string {
  // Credentials and query strings (pre-signed tokens) never go into status messages.
  return `${u.protocol}//${u.host}${u.pathname}`;
}

function tlsHint(e: Error): string {
  const code = (e as NodeJS.ErrnoException).code ?? '';
  return /CERT|SELF_SIGNED|UNABLE_TO_VERIFY/.test(code) ? ' (the server certificate is not trusted: add its CA with certConfigMap)' : '';
}

function transferError(e: unknown, bytes: number, length: number | undefined, signal: AbortSignal | undefined, isHttp: boolean): unknown {
  if (signal?.aborted) return aborted(signal);
  if (e instanceof ImportError) return e;
  const err = e as NodeJS.ErrnoException;
  if (err?.code === 'Z_BUF_ERROR' || /unexpected end of file/i.test(err?.message ?? '')) {
    return new ImportError('Truncated', `the gzip stream ends early after ${bytes} bytes: the download or the file is incomplete; re-create or re-upload it`, {
      cause: e,
    });
  }
  if (typeof err?.code === 'string' && err.code.startsWith('Z_')) {
    return new ImportError('Corrupt', `the gzip data cannot be decompressed (${err.message}): re-create or re-upload the image`, { cause: e });
  }
  if (err?.code === 'ECONNRESET' || err?.message === 'aborted' || err?.code === 'ERR_STREAM_PREMATURE_CLOSE') {
    const of = length !== undefined ? ` of ${length}` : '';
    return new ImportError(
      'Truncated',
      `the transfer ended after ${bytes}${of} bytes: the ${isHttp ? 'server closed the connection' : 'stream ended'} early; retry the import`,
      { cause: e },
    );
  }
  if (err?.code === 'ENOSPC')
    return new ImportError('TooLarge', 'the volume ran out of space while receiving the image: free space or use a larger claim', { cause: e });
  return e;
}

// ---------------------------------------------------------------------------------------
// Format detection and inspection

/**
 * The format of an image file from its magic numbers. Only qemu-img's formats that Vessel
 * accepts come back; other recognised image formats are refused here, and everything else
 * is raw (ISO images included). qemu-img is then always told the format (-f), because
 * letting it probe an untrusted file is how a raw guest disk gets opened as qcow2.
 */
export async function sniffFormat(path: string, range?: { offset: number; size: number }): Promise<DiskFormat> {
  const fh = await open(path, 'r');
  let head: Buffer, tail: Buffer, size: number;
  try {
    size = range ? range.size : (await fh.stat()).size;
    const start = range?.offset ?? 0;
    head = Buffer.alloc(Math.min(size, 4096));
    await fh.read(head, 0, head.length, start);
    tail = Buffer.alloc(Math.min(size, 512));
    await fh.read(tail, 0, tail.length, start + size - tail.length);
  } finally {
    await fh.close();
  }
  const at = (s: string, off = 0) => head.length >= off + s.length && head.toString('latin1', off, off + s.length) === s;
  if (at('QFI\xfb')) {
    const version = head.length >= 8 ? head.readUInt32BE(4) : 0;
    if (version !== 2 && version !== 3) throw unsupported(`qcow version ${version}`);
    checkQcow2Header(head);
    return 'qcow2';
  }
  if (at('KDMV')) return 'vmdk';
  if (at('conectix')) return 'vpc';
  if (at('vhdxfile')) return 'vhdx';
  if (at('# Disk DescriptorFile') || /createType\s*=/.test(head.toString('latin1', 0, Math.min(head.length, 1024)))) {
    throw new ImportError(
      'DataFileRefused',
      'the image is a VMDK descriptor that names its data in other files (which could be host files): convert it to a monolithic VMDK or qcow2 first (qemu-img convert -O qcow2)',
    );
  }
  if (at('COWD')) throw unsupported('VMDK3 (COWD)');
  if (at('QED\0')) throw unsupported('QED');
  if (head.length >= 0x44 && head.readUInt32LE(0x40) === 0xbeda107f) throw unsupported('VDI');
  if (at('LUKS\xba\xbe')) throw new ImportError('EncryptedRefused', 'the image is LUKS-encrypted: Vessel cannot import encrypted images; decrypt it first');
  if (at('WithoutFreeSpace') || at('WithouFreSpacExt')) throw unsupported('Parallels');
  if (at('Bochs Virtual HD Image')) throw unsupported('Bochs');
  if (at('#!/bin/sh\n#V2.0 Format')) throw unsupported('cloop');
  // Fixed-size VHD keeps its only header (footer) in the last 512 bytes; qemu would probe it as raw.
  if (size >= 1024 && tail.toString('latin1', 0, 8) === 'conectix') return 'vpc';
  if (size >= 1024 && tail.toString('latin1', 0, 4) === 'koly') throw unsupported('DMG');
  return 'raw';
}

function unsupported(what: string): ImportError {
  return new ImportError(
    'UnsupportedFormat',
    `the image is ${what}, which Vessel does not import: convert it to qcow2, raw, vmdk, vhd or vhdx first (qemu-img convert -O qcow2)`,
  );
}

/**
 * Refuses qcow2 features that make qemu open other files, read straight from the header so
 * no qemu-img process ever opens them: a backing file, an external data file (incompatible
 * feature bit 2), and encryption.
 */
function checkQcow2Header(h: Buffer): void {
  if (h.length < 72) throw new ImportError('Corrupt', 'the qcow2 header is cut short: the file is not a complete qcow2 image; re-create or re-download it');
  const backingOffset = h.readBigUInt64BE(8);
  if (backingOffset !== 0n) {
    const len = h.readUInt32BE(16);
    const off = Number(backingOffset);
    const name = off + len <= h.length && len > 0 ? `"${h.toString('utf8', off, off + len)}"` : 'a backing file';
    throw new ImportError(
      'BackingFileRefused',
      `the qcow2 image names ${name} as its backing file, which would be read from this host: flatten it first (qemu-img convert -O qcow2 without -B) and import the result`,
    );
  }
  if (h.readUInt32BE(32) !== 0)
    throw new ImportError(
      'EncryptedRefused',
      'the qcow2 image is encrypted: Vessel cannot import encrypted images; decrypt it first (qemu-img convert --object secret,... -O qcow2)',
    );
  if (h.readUInt32BE(4) >= 3 && h.length >= 80) {
    const incompatible = h.readBigUInt64BE(72);
    if (incompatible & 4n) throw dataFileRefused();
  }
}

function dataFileRefused(detail = 'keeps its data in an external data file'): ImportError {
  return new ImportError(
    'DataFileRefused',
    `the image ${detail}, which would be read from this host: convert it to a self-contained image first (qemu-img convert -O qcow2) and import the result`,
  );
}

function tooLarge(size: number, max: number, what = "the image's virtual size is"): ImportError {
  return new ImportError(
    'TooLarge',
    `${what} ${size} bytes (${humanBytes(size)}), more than the claim's ${max} bytes (${humanBytes(max)}): request a larger PVC (spec.storage.resources.requests.storage) or import a smaller image`,
  );
}

/** A transfer stopped (or refused up front) for outgrowing what the claim can hold. */
export function streamTooLarge(bytes: number, max: number, what: string): ImportError {
  return new ImportError(
    'TooLarge',
    `${what} ${bytes} bytes (${humanBytes(bytes)}), more than an image for the claim's ${max} bytes (${humanBytes(max)}) can take (${maxImageBytes(max)} bytes with format overhead): request a larger PVC (spec.storage.resources.requests.storage) or import a smaller image`,
  );
}

/** A size for people: "1.50 GiB", "64.00 MiB", "12.5 KiB", "300 bytes". */
export function humanBytes(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const units: [number, string, number][] = [
    [2 ** 40, 'TiB', 2],
    [2 ** 30, 'GiB', 2],
    [2 ** 20, 'MiB', 2],
    [2 ** 10, 'KiB', 1],
  ];
  for (const [size, unit, digits] of units) if (Math.abs(n) >= size) return `${(n / size).toFixed(digits)} ${unit}`;
  return `${n} bytes`;
}

/** qemu-img info (+ check for qcow2) under resource limits, and every refusal rule. */
async function inspect(path: string, format: DiskFormat, max: number, signal: AbortSignal | undefined): Promise<ImageInfo & { leaks: number }> {
  let inf: ImageInfo;
  try {
    inf = await qemuImg.info(path, { format, untrusted: true, timeoutMs: 60_000, signal });
  } catch (e) {
    if (signal?.aborted) throw aborted(signal);
    const why = e instanceof QemuImgError ? firstLine(e.stderr) || e.message : String(e);
    throw new ImportError('Corrupt', `the image cannot be opened as ${format} (${why}): the file is damaged or incomplete; re-create or re-download it`, {
      cause: e,
    });
  }
  if (inf.format !== format)
    throw new ImportError('Corrupt', `qemu-img opened the image as ${inf.format}, not ${format}: the file is damaged or not what it seems`);
  if (inf.backingFilename !== undefined) {
    throw new ImportError(
      'BackingFileRefused',
      `the ${format} image names "${inf.backingFilename}" as its backing file, which would be read from this host: flatten it first (qemu-img convert -O qcow2) and import the result`,
    );
  }
  if (inf.encrypted) throw new ImportError('EncryptedRefused', 'the image is encrypted: Vessel cannot import encrypted images; decrypt it first');
  const d = inf.specific;
  if (format === 'qcow2') {
    if (d['data-file'] !== undefined || d['data-file-raw'] === true) throw dataFileRefused();
    if (d.corrupt === true)
      throw new ImportError('Corrupt', 'the qcow2 image is marked corrupt: repair it (qemu-img check -r all) or re-create it, then import again');
  }
  if (format === 'vmdk') {
    const own = basename(path);
    const extents = Array.isArray(d.extents) ? (d.extents as { filename?: string }[]) : [];
    // A range source's extent is the raw window it was opened over (its json: without the format layer).
    const window = path.startsWith('json:') ? JSON.stringify((JSON.parse(path.slice(5)) as { file?: unknown }).file) : undefined;
    const sameWindow = (f: string): boolean => {
      if (!window || !f.startsWith('json:')) return false;
      try {
        return sameJson(JSON.parse(f.slice(5)), JSON.parse(window));
      } catch {
        return false;
      }
    };
    if (extents.some((x) => x.filename !== undefined && (window ? !sameWindow(x.filename) : basename(x.filename) !== own && x.filename !== path)))
      throw dataFileRefused('keeps extents in other files');
    const type = String(d['create-type'] ?? '');
    if (type !== 'monolithicSparse' && type !== 'streamOptimized')
      throw dataFileRefused(`is a ${type || 'multi-file'} VMDK, whose extents live in other files`);
  }
  if (inf.virtualSize === 0) throw new ImportError('Corrupt', 'the image is empty (0 bytes of disk): check that the URL or upload gives the image itself');
  if (!Number.isSafeInteger(inf.virtualSize) || inf.virtualSize < 0)
    throw new ImportError('Corrupt', `the image reports a virtual size of ${inf.virtualSize}: the header is damaged`);
  if (inf.virtualSize > max) throw tooLarge(inf.virtualSize, max);
  let leaks = 0;
  if (format === 'qcow2') {
    let r: qemuImg.CheckResult;
    try {
      r = await qemuImg.check(path, { format, untrusted: true, timeoutMs: 300_000, signal });
    } catch (e) {
      if (signal?.aborted) throw aborted(signal);
      const why = e instanceof QemuImgError ? firstLine(e.stderr) || e.message : String(e);
      throw new ImportError('Corrupt', `qemu-img check cannot check the qcow2 image (${why}): it is damaged; re-create or re-download it`, { cause: e });
    }
    if (r.exitCode === 2 || r.corruptions > 0 || r.checkErrors > 0) {
      throw new ImportError(
        'Corrupt',
        `qemu-img check found ${r.corruptions} corruption(s) and ${r.checkErrors} error(s) in the qcow2 image: repair it (qemu-img check -r all) or re-create it, then import again`,
      );
    }
    leaks = r.leaks;
  }
  return { ...inf, leaks };
}

/** Deep equality of two parsed JSON values, key order aside (qemu-img reorders the keys of a json: filename). */
function sameJson(a: unknown, b: unknown): boolean {
  if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return a === b;
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && sameJson((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

/** True when publishing the qcow2 as received is as good as converting it. */
function isPlainQcow2(inf: ImageInfo & { leaks: number }): boolean {
  const d = inf.specific;
  const snapshots = inf.raw.snapshots;
  const bitmaps = d.bitmaps;
  return (
    d.compat === '1.1' &&
    d.corrupt !== true &&
    d['lazy-refcounts'] !== true &&
    d['data-file'] === undefined &&
    !inf.dirty &&
    !inf.encrypted &&
    inf.backingFilename === undefined &&
    inf.leaks === 0 &&
    (snapshots === undefined || (Array.isArray(snapshots) && snapshots.length === 0)) &&
    (bitmaps === undefined || (Array.isArray(bitmaps) && bitmaps.length === 0))
  );
}

/**
 * qemu-img convert to qcow2 with the destination opened O_DIRECT (-t none): the data is on
 * disk when qemu-img exits, so the fsync before publishing is nearly free. Measured on 512
 * MiB: 420 ms, against 380 ms + 270 ms fsync through the page cache. Filesystems without
 * O_DIRECT get the page cache and the fsync in publish().
 */
export async function convertDurably(
  input: string,
  out: string,
  format: DiskFormat,
  signal: AbortSignal | undefined,
  onProgress: (p: number) => void,
  forceShare = false,
): Promise<void> {
  const run = (destCache: 'none' | undefined) =>
    qemuImg.convert(input, out, { srcFormat: format, outFormat: 'qcow2', destCache, signal, onProgress, forceShare });
  try {
    await run('none');
  } catch (e) {
    if (!signal?.aborted && e instanceof QemuImgError && /O_DIRECT|Invalid argument/i.test(e.stderr)) {
      await rm(out, { force: true });
      try {
        await run(undefined);
        return;
      } catch (e2) {
        throw asImportError(e2, signal, `converting the ${format} image to qcow2 failed`);
      }
    }
    throw asImportError(e, signal, `converting the ${format} image to qcow2 failed`);
  }
}

/** The converted file must be a plain qcow2 of the source's size: anything else is our bug or tampering. */
async function verifyOutput(path: string, expectedSize: number, max: number, signal: AbortSignal | undefined): Promise<ImageInfo> {
  const inf = await qemuImg.info(path, { format: 'qcow2', signal });
  const problems: string[] = [];
  if (inf.format !== 'qcow2') problems.push(`format ${inf.format}`);
  if (inf.backingFilename !== undefined) problems.push(`backing file ${inf.backingFilename}`);
  if (inf.specific['data-file'] !== undefined) problems.push('an external data file');
  // qcow2 rounds sizes up to 512 bytes; vpc's CHS geometry can make the source a little larger.
  if (inf.virtualSize < expectedSize || inf.virtualSize > Math.max(expectedSize + 511, 0) || inf.virtualSize > max + 511)
    problems.push(`virtual size ${inf.virtualSize} (expected ${expectedSize})`);
  if (problems.length) throw new ImportError('QemuImgFailed', `the converted image is not what was asked for (${problems.join(', ')}): report this as a bug`);
  return inf;
}

/** fsync the file, rename it into place, fsync the directory: the disk survives a crash whole or not at all. */
/** fsyncs `tmp`, renames it to `dest` and fsyncs the directory: after a crash `dest` is absent or whole. */
export async function publish(tmp: string, dest: string): Promise<void> {
  const fh = await open(tmp, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, dest);
  const dir = await open(dirname(dest), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

// ---------------------------------------------------------------------------------------

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw aborted(signal);
}

function aborted(signal: AbortSignal): ImportError {
  return new ImportError('Aborted', 'the import was cancelled; nothing was written', { cause: signal.reason });
}

function asImportError(e: unknown, signal: AbortSignal | undefined, what: string): ImportError {
  if (signal?.aborted) return aborted(signal);
  if (e instanceof ImportError) return e;
  const err = e as NodeJS.ErrnoException;
  if (err?.code === 'ENOSPC') return new ImportError('TooLarge', `${what}: the volume ran out of space; free space or use a larger claim`, { cause: e });
  return new ImportError(e instanceof Error && 'code' in e ? 'IOError' : 'QemuImgFailed', `${what}: ${err?.message ?? String(e)}`, { cause: e });
}
