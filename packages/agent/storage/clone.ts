/**
 * Volume clones. Linked: a qcow2 overlay whose backing file is the source, made in O(1)
 * whatever the size (golden images: the source must never change, which the pool keeps by
 * tombstoning instead of deleting a volume clones read). Full: a flattened copy by
 * `qemu-img convert`, for sources that keep changing (a VM's disk) or live in another pool.
 * Both write a temporary file and publish by rename.
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { ImportError } from './errors.ts';
import { convertDurably, publish } from './import.ts';
import * as qemuImg from './qemu-img.ts';

export interface CloneOptions {
  source: string;
  dest: string;
  /** Virtual size of the clone in bytes; at least the source's (clones grow, never shrink). */
  size: number;
  linked: boolean;
  /**
   * The source never changes (a snapshot file) but may be open in a running QEMU, which holds
   * its lock: read it with -U, and link to it without opening it.
   */
  immutableSource?: boolean;
  signal?: AbortSignal;
  onProgress?: (percent: number) => void;
}

export async function cloneVolume(opts: CloneOptions): Promise<{ linked: boolean; virtualSize: number }> {
  const shared = opts.immutableSource === true;
  const src = await qemuImg.info(opts.source, { format: 'qcow2', signal: opts.signal, forceShare: shared });
  if (opts.size < src.virtualSize) {
    throw new ImportError(
      'TooLarge',
      `the clone (${opts.size} bytes) is smaller than its source (${src.virtualSize} bytes): ask for at least the source's size`,
    );
  }
  const tmp = `${opts.dest}.tmp-${randomBytes(6).toString('hex')}`;
  try {
    if (opts.linked) {
      await qemuImg.create(tmp, {
        format: 'qcow2',
        backingFile: opts.source,
        backingFormat: 'qcow2',
        size: opts.size,
        unsafeBacking: shared,
        signal: opts.signal,
      });
    } else {
      await convertDurably(opts.source, tmp, 'qcow2', opts.signal, (p) => opts.onProgress?.(p), shared);
      if (opts.size > src.virtualSize) await qemuImg.resize(tmp, opts.size, { format: 'qcow2', signal: opts.signal });
    }
    await publish(tmp, opts.dest);
    opts.onProgress?.(100);
    return { linked: opts.linked, virtualSize: opts.size };
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}
