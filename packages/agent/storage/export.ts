/**
 * Serves a volume's bytes for a VirtualMachineExport: the qcow2 (with its backing chain) as a
 * raw disk image, or that raw image gzipped. qemu-img cannot write raw to a pipe (it resizes
 * and seeks its output), so it converts into a sparse temporary file next to the volume (same
 * pool: no copy across filesystems, and only the allocated blocks take space), which is
 * unlinked as soon as it is open: nothing stays behind once the stream ends, fails or the
 * client goes away. The reader sees the holes as zeros.
 */
import { randomBytes } from 'node:crypto';
import { open, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { convert } from './qemu-img.ts';

export type ExportFormat = 'raw' | 'gzip';

/** Streams `path` (a qcow2 volume or snapshot file, already checked to be in the namespace's pool directory) to `out`. */
export async function streamVolume(
  path: string,
  format: ExportFormat,
  out: Writable & { writeHead?: (code: number, headers: Record<string, string>) => unknown },
  opts: { signal?: AbortSignal; forceShare?: boolean } = {},
): Promise<void> {
  const tmp = join(dirname(path), `.export-${randomBytes(8).toString('hex')}.raw`);
  try {
    // -S 4k: zero blocks stay holes in the temporary file.
    await convert(path, tmp, { srcFormat: 'qcow2', outFormat: 'raw', sparseSize: '4k', forceShare: opts.forceShare, signal: opts.signal });
    const fh = await open(tmp, 'r');
    await unlink(tmp);
    const size = (await fh.stat()).size;
    out.writeHead?.(200, {
      'Content-Type': format === 'gzip' ? 'application/gzip' : 'application/octet-stream',
      ...(format === 'raw' ? { 'Content-Length': String(size) } : {}),
    });
    const input = fh.createReadStream({ highWaterMark: 1 << 20 });
    if (format === 'gzip') await pipeline(input, createGzip({ level: 1 }), out, { signal: opts.signal });
    else await pipeline(input, out, { signal: opts.signal });
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}
