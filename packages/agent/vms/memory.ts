/**
 * Guest memory state to and from a file, with QEMU's migration stream (what Proxmox's
 * "include RAM" snapshots and `savevm` do): saved while the guest is paused, so it matches the
 * disk snapshots taken in the same pause; loaded into a QEMU started with `-incoming defer`,
 * which then resumes the guest where it was instead of booting it.
 * QEMU 7.2 has no `file:` migration URI; `exec:` runs a shell command, so paths are checked
 * to hold nothing a shell would read as syntax.
 */
import { open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { QmpClient } from '../qmp/client.ts';

export { RESUME_MEMORY } from '@vessel/api';

export class MemoryStateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MemoryStateError';
  }
}

/** Bytes per second: 1 TiB/s, i.e. no limit. */
const UNLIMITED = 2 ** 40;
const SAFE_PATH = /^\/[A-Za-z0-9._@/-]+$/;

function checkPath(path: string): string {
  if (!SAFE_PATH.test(path)) throw new MemoryStateError(`memory state path ${path} has characters the migration command cannot carry`);
  return path;
}

/** Writes the paused guest's memory and device state to `file` (atomically). The guest stays paused. */
export async function saveMemory(qmp: QmpClient, file: string, timeoutMs = 10 * 60_000): Promise<number> {
  const tmp = checkPath(`${file}.tmp`);
  // QEMU caps a migration at 128 MiB/s by default, which is for networks shared with running
  // guests; this one is paused and writes to a local file, so it goes as fast as the disk.
  const { 'max-bandwidth': bandwidth } = await qmp.execute<{ 'max-bandwidth': number }>('query-migrate-parameters');
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': UNLIMITED });
  try {
    await qmp.execute('migrate', { uri: `exec:cat > ${tmp}` });
    await waitMigration(qmp, timeoutMs, 'saving the guest memory');
    const fh = await open(tmp, 'r+');
    let size: number;
    try {
      await fh.sync();
      size = (await fh.stat()).size;
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
    const dir = await open(dirname(file), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    return size;
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  } finally {
    // Restoring the bandwidth must not mask the save's own outcome; a QEMU gone meanwhile has nothing to restore.
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': bandwidth }).catch(() => undefined);
  }
}

/** Loads `file` into a QEMU waiting in `-incoming defer`; the guest is left paused, ready for `cont`. */
export async function loadMemory(qmp: QmpClient, file: string, timeoutMs = 10 * 60_000): Promise<void> {
  await qmp.execute('migrate-incoming', { uri: `exec:cat ${checkPath(file)}` });
  await waitMigration(qmp, timeoutMs, 'loading the guest memory');
}

async function waitMigration(qmp: QmpClient, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled') throw new MemoryStateError(`${what} failed: ${info['error-desc'] ?? info.status}`);
    // The incoming side reports nothing until the stream ends; its run state says when it is done.
    if (info.status === undefined) {
      const { status } = await qmp.execute<{ status: string }>('query-status');
      if (status !== 'inmigrate') return;
    }
    if (Date.now() > deadline) throw new MemoryStateError(`${what} did not finish within ${timeoutMs / 1000}s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
