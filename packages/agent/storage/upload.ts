/**
 * Upload sessions: the bytes of `vessel image-upload` (through the API server's upload proxy)
 * land in `<volume>.upload`, as sent. The file survives a dropped connection or a restart, so
 * a client asks for the offset (HEAD) and sends the rest (Vessel's resume extension; CDI has
 * none). When every byte is there the usual importer turns the file into the volume, with all
 * its checks, and the file is removed. Streams end to end: memory stays flat.
 */
import { createWriteStream } from 'node:fs';
import { open, rm, stat } from 'node:fs/promises';
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { HttpError } from '@vessel/http';
import type { ImportError } from './errors.ts';
import { maxImageBytes, streamTooLarge } from './import.ts';
import { undefinedIfMissing } from './pools.ts';

/** An upload refused or cut off: `code` is the HTTP answer, `offset` the bytes kept (resume from there). */
export class UploadError extends HttpError {
  constructor(
    code: number,
    message: string,
    readonly offset?: number,
  ) {
    super(code, message);
    this.name = 'UploadError';
  }
}

export const partPath = (dest: string) => `${dest}.upload`;

/** Bytes of an upload buffered in memory on their way to the file (see receiveUpload). */
const WRITE_BUFFER = 1 << 20;

/** Bytes of the upload received so far (0 when none). */
export async function uploadOffset(dest: string): Promise<number> {
  return stat(partPath(dest)).then(
    (s) => s.size,
    () => 0,
  );
}

export interface ReceiveOptions {
  /** Where this request's body starts in the file; must equal the bytes already received. */
  offset: number;
  /** Total size of the file, when the client knows it. */
  length?: number;
  /**
   * The claim's size. The upload may hold, in all (earlier attempts included), that plus the
   * image format's overhead (import.ts maxImageBytes): one announced larger is refused
   * before a byte is stored, one that grows past it is cut off while streaming.
   */
  claimBytes: number;
  onBytes?: (received: number) => void;
  signal?: AbortSignal;
}

/**
 * Appends `body` to the session's file at `offset`. Resolves with the bytes now held and
 * whether the upload is complete (all of `length`, or the body ended and no length was
 * given). A body that breaks off keeps what arrived, fsynced, for the next attempt. Throws
 * ImportError TooLarge, with the file removed, when the upload outgrows the claim; the body
 * is then left unread (paused), so the caller can answer and close the connection.
 */
export async function receiveUpload(dest: string, body: Readable, opts: ReceiveOptions): Promise<{ received: number; complete: boolean }> {
  const have = await uploadOffset(dest);
  if (opts.offset !== have) {
    body.resume();
    throw new UploadError(409, `upload offset ${opts.offset} does not match the ${have} bytes already received: resume from ${have}`, have);
  }
  if (opts.length !== undefined && opts.length < have) {
    body.resume();
    throw new UploadError(409, `Upload-Length ${opts.length} is less than the ${have} bytes already received`, have);
  }
  const maxBytes = maxImageBytes(opts.claimBytes);
  if (opts.length !== undefined && opts.length > maxBytes) {
    await rm(partPath(dest), { force: true });
    throw streamTooLarge(opts.length, opts.claimBytes, 'the upload is');
  }
  const path = partPath(dest);
  // Without truncating: an upload that starts at 0 truncates, one that resumes appends.
  // Buffers of 1 MiB, not 16 KiB: the body keeps flowing while a write is in flight and the
  // chunks meanwhile go down in one writev (issue 14 benchmark: 16 KiB steps paused the sender
  // at every write, which on a loaded host cost more than the copy itself).
  const out = createWriteStream(path, { flags: opts.offset === 0 ? 'w' : 'r+', start: opts.offset, highWaterMark: WRITE_BUFFER });
  let received = opts.offset;
  let tooLarge: ImportError | undefined;
  // The limit is checked before a chunk is written, so the file never holds more than maxBytes.
  // The body is read through `feed`, not piped into the pipeline itself: the pipeline destroys
  // what it reads from on error, and destroying the request would drop the answer too.
  const feed = new PassThrough({ highWaterMark: WRITE_BUFFER });
  const onData = (chunk: Buffer) => {
    if (received + chunk.length > maxBytes) {
      tooLarge = streamTooLarge(received + chunk.length, opts.claimBytes, 'the upload was stopped at');
      body.off('data', onData);
      body.pause();
      feed.destroy(tooLarge);
      return;
    }
    received += chunk.length;
    opts.onBytes?.(received);
    if (!feed.write(chunk)) {
      body.pause();
      feed.once('drain', () => {
        if (!tooLarge) body.resume();
      });
    }
  };
  body.on('data', onData);
  body.once('end', () => feed.end());
  body.once('error', (e) => feed.destroy(e));
  body.once('close', () => {
    if (!body.readableEnded && !tooLarge) feed.destroy(new Error('aborted'));
  });
  try {
    await pipeline(feed, out, { signal: opts.signal });
  } catch {
    if (tooLarge) {
      // Nothing of an oversize upload is kept: a resume could only make it larger.
      await rm(path, { force: true });
      throw tooLarge;
    }
    // Broken off: keep what arrived, durably. The next HEAD reports the size.
    body.off('data', onData);
    await syncFile(path);
    const kept = await uploadOffset(dest);
    throw new UploadError(499, `upload interrupted after ${kept} bytes: resume from there`, kept);
  }
  await syncFile(path);
  const size = await uploadOffset(dest);
  if (opts.length !== undefined && size > opts.length) {
    await rm(path, { force: true });
    throw new UploadError(400, `received ${size} bytes, more than the announced Upload-Length ${opts.length}; start again`);
  }
  return { received: size, complete: opts.length === undefined || size === opts.length };
}

async function syncFile(path: string): Promise<void> {
  // A part file already gone has nothing to sync; failing to open one that exists is a real error.
  const fh = await open(path, 'r+').catch(undefinedIfMissing);
  if (!fh) return;
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function discardUpload(dest: string): Promise<void> {
  await rm(partPath(dest), { force: true });
}
