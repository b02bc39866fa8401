/**
 * Snapshot chains of pool volumes (qcow2 external snapshots). A volume's path P always names
 * its active layer, so a VM starts from P whatever snapshots exist. Taking snapshot S:
 *   1. a journal `P.chain` records the intent (the snapshot's and the new overlay's names);
 *   2. S becomes a second name (hard link) of P's file, which is frozen from then on;
 *   3. a new overlay O (`P.pending-<hex>`) backed by S is made;
 *   4. live: QEMU moves the disk's writes to O (blockdev-add + blockdev-snapshot);
 *   5. O is renamed over P, and the journal goes.
 * A crash leaves at most the journal and the files it names; recover() finishes or undoes the
 * step: forward once QEMU may have written into O, back otherwise. Restoring puts a fresh
 * overlay on S over P the same way (no copy). Deleting S merges it into its one child with
 * `qemu-img rebase` (which copies only S's own clusters) and removes it; while the child is in
 * use by a running QEMU, or S has several children (restores, clones), S is tombstoned instead
 * and compact() merges it later.
 *
 * A running QEMU keeps the names it opened files under (P for what is now S, O for what is now
 * P), so Vessel never asks a running QEMU to reopen a backing image by name: no live stream or
 * commit; merges happen with the image closed. (QEMU's own read-only reopen of the former top
 * at blockdev-snapshot is why O's file node is added on its own: see switchLive.)
 */
import { randomBytes } from 'node:crypto';
import { link, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { faultPoint } from '../faults.ts';
import type { QmpClient } from '../qmp/client.ts';
import { QemuImgError } from './errors.ts';
import { backingFile, undefinedIfMissing, type Pool } from './pools.ts';
import * as qemuImg from './qemu-img.ts';

export type ChainErrorCode = 'NotAttached' | 'GoldenImage' | 'SnapshotMissing' | 'Conflict';

export class ChainError extends Error {
  constructor(
    readonly code: ChainErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'ChainError';
  }
}

/** A disk of a running QEMU: its QMP connection and the device's qdev id (`ua-<disk>`). */
export interface LiveDisk {
  qmp: QmpClient;
  device: string;
}

type Journal = { op: 'snapshot'; snapshot: string; overlay: string; device?: string; overlayBytes?: number } | { op: 'restore'; overlay: string };

/** The file of snapshot `snapshotUid` of the volume at `volume`. */
export function snapshotFileFor(volume: string, snapshotUid: string): string {
  return `${volume.replace(/\.qcow2$/, '')}@${snapshotUid}.qcow2`;
}

const journalOf = (volume: string) => `${volume}.chain`;
const pendingFor = (volume: string) => `${volume}.pending-${randomBytes(6).toString('hex')}`;

/** Freezes the volume's current content as `snapshot` and continues in a new overlay on it. */
export async function takeSnapshot(pool: Pool, volume: string, snapshot: string, live?: LiveDisk): Promise<void> {
  await recover(volume, live);
  if (await exists(snapshot)) {
    if ((await backingFile(volume)) === snapshot) return; // taken before a restart
    throw new ChainError('Conflict', `${snapshot} exists but is not the backing file of ${volume}`);
  }
  await refuseGolden(pool, volume);
  const overlay = pendingFor(volume);
  const size = live ? await liveVirtualSize(live) : (await qemuImg.info(volume, { format: 'qcow2' })).virtualSize;
  await writeJournal(volume, { op: 'snapshot', snapshot, overlay, device: live?.device });
  await link(volume, snapshot);
  faultPoint('snapshot:link');
  // -u: a running QEMU holds the write lock on the file S now names.
  await qemuImg.create(overlay, { format: 'qcow2', backingFile: snapshot, backingFormat: 'qcow2', unsafeBacking: true, size });
  await writeJournal(volume, { op: 'snapshot', snapshot, overlay, device: live?.device, overlayBytes: (await stat(overlay)).size });
  faultPoint('snapshot:overlay');
  if (live) await switchLive(live, overlay);
  faultPoint('snapshot:switch');
  await rename(overlay, volume);
  await syncDir(dirname(volume));
  await rm(journalOf(volume), { force: true });
}

/** Makes the volume's content that of `snapshot` again (a new overlay on it). The VM must not run. */
export async function restoreVolume(pool: Pool, volume: string, snapshot: string): Promise<void> {
  await recover(volume);
  if (!(await exists(snapshot))) throw new ChainError('SnapshotMissing', `the snapshot file ${snapshot} is gone`);
  await refuseGolden(pool, volume);
  const current = await qemuImg.info(volume, { format: 'qcow2' }).then(
    (i) => i.virtualSize,
    () => 0,
  );
  // Snapshot files never change, but a running QEMU (a clone's, or its VM's before a stop) may hold their lock.
  const size = Math.max(current, (await qemuImg.info(snapshot, { format: 'qcow2', forceShare: true })).virtualSize);
  const overlay = pendingFor(volume);
  await writeJournal(volume, { op: 'restore', overlay });
  await qemuImg.create(overlay, { format: 'qcow2', backingFile: snapshot, backingFormat: 'qcow2', unsafeBacking: true, size });
  faultPoint('restore:overlay');
  await rename(overlay, volume);
  await syncDir(dirname(volume));
  await rm(journalOf(volume), { force: true });
}

/**
 * Finishes or undoes a snapshot or restore that a crash interrupted. With `live` (the VM runs),
 * QEMU says whether it writes into the new overlay; without, the overlay having grown does.
 */
export async function recover(volume: string, live?: LiveDisk): Promise<'none' | 'forward' | 'back'> {
  const j = await readJournal(volume);
  if (!j) return 'none';
  let outcome: 'forward' | 'back' = 'back';
  if (j.op === 'restore') {
    await rm(j.overlay, { force: true }); // the restore runs again from the start
  } else if (await exists(j.overlay)) {
    let inUse: boolean;
    if (live) {
      // By node name: QEMU may show the file as a json: pseudo-filename once it has a backing node.
      inUse = (await liveTopNode(live)) === nodeNameFor(j.overlay);
      if (!inUse) await dropLiveNode(live, j.overlay);
    } else {
      inUse = j.overlayBytes !== undefined && (await stat(j.overlay)).size > j.overlayBytes;
    }
    if (inUse) {
      await rename(j.overlay, volume);
      outcome = 'forward';
    } else {
      await rm(j.overlay, { force: true });
      if (await sameFile(j.snapshot, volume)) await rm(j.snapshot, { force: true });
    }
  } else if ((await backingFile(volume)) === j.snapshot) {
    outcome = 'forward'; // renamed before the crash: only the journal was left
  } else if (await sameFile(j.snapshot, volume)) {
    await rm(j.snapshot, { force: true });
  }
  await syncDir(dirname(volume));
  await rm(journalOf(volume), { force: true });
  return outcome;
}

/**
 * Deletes a snapshot file: merges it into its only child and removes it, or tombstones it
 * while it has several children or its child is open in a running QEMU.
 */
export async function deleteSnapshot(pool: Pool, snapshot: string): Promise<'deleted' | 'kept'> {
  if (!(await exists(snapshot))) return 'deleted';
  await writeFile(`${snapshot}.deleted`, 'snapshot deleted; kept until merged into its child\n');
  await compact(pool, snapshot);
  return (await exists(snapshot)) ? 'kept' : 'deleted';
}

/**
 * Merges tombstoned snapshot files (all of the pool's, or just `only`) into their only child
 * where that child is not open in a QEMU, and removes those no image reads any more.
 */
export async function compact(pool: Pool, only?: string): Promise<string[]> {
  const merged: string[] = [];
  for (const file of only ? [only] : await pool.volumes()) {
    if (!(await exists(`${file}.deleted`))) continue;
    const children = await pool.cloneUsers(file);
    if (children.length !== 1) continue;
    try {
      await qemuImg.rebase(children[0], (await backingFile(file)) ?? '', { format: 'qcow2' });
    } catch (e) {
      if (e instanceof QemuImgError && /lock/i.test(e.stderr)) continue; // open in a QEMU: later
      throw e;
    }
    merged.push(file);
  }
  await pool.collect();
  return merged;
}

/** A golden image must never change: its linked clones, in any namespace, read it. */
async function refuseGolden(pool: Pool, volume: string): Promise<void> {
  const users = await pool.cloneUsers(volume);
  if (users.length)
    throw new ChainError(
      'GoldenImage',
      `${volume} is the base of linked clones (${basename(users[0])}): it must never change, so it cannot be snapshotted or restored; clone it fully first`,
    );
}

interface BlockInfo {
  qdev?: string;
  inserted?: { 'node-name': string; image: { 'virtual-size': number }; cache: { direct: boolean; 'no-flush': boolean } };
}

async function liveBlock(live: LiveDisk): Promise<NonNullable<BlockInfo['inserted']>> {
  const blocks = await live.qmp.execute<BlockInfo[]>('query-block');
  const b = blocks.find((x) => x.qdev === live.device || x.qdev?.startsWith(`/machine/peripheral/${live.device}/`));
  if (!b?.inserted) throw new ChainError('NotAttached', `QEMU has no disk ${live.device}`);
  return b.inserted;
}

const liveVirtualSize = async (live: LiveDisk) => (await liveBlock(live)).image['virtual-size'];
const liveTopNode = async (live: LiveDisk) => (await liveBlock(live))['node-name'];
const nodeNameFor = (overlay: string) => `ov-${overlay.slice(-12)}`;

async function switchLive(live: LiveDisk, overlay: string): Promise<void> {
  const {
    'node-name': top,
    cache: { direct, 'no-flush': noFlush },
  } = await liveBlock(live);
  const node = nodeNameFor(overlay);
  // The disk's cache mode (KubeVirt's cache: none is O_DIRECT) carries over to its new layer.
  const cache = { direct, 'no-flush': noFlush };
  // The file node is a node of its own, as the VM's disks are on the command line: when a later
  // snapshot makes this layer a backing file, QEMU reopens it read-only, and it would reopen an
  // inline file child by its name, which by then is gone (renamed over P). The reopen failed,
  // and the layer kept its write lock, so no other QEMU could read its snapshot.
  await live.qmp.execute('blockdev-add', { driver: 'file', 'node-name': `${node}-f`, filename: overlay, discard: 'unmap', cache });
  try {
    await live.qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': node, file: `${node}-f`, discard: 'unmap', backing: null, cache });
    await live.qmp.execute('blockdev-snapshot', { node: top, overlay: node });
  } catch (e) {
    await dropLiveNode(live, overlay);
    throw e;
  }
}

/** Removes an overlay node that was added but never became the disk's active layer. */
async function dropLiveNode(live: LiveDisk, overlay: string): Promise<void> {
  const node = nodeNameFor(overlay);
  // Cleanup after a failure the caller rethrows: a node that was never added cannot be deleted, which is fine.
  await live.qmp.execute('blockdev-del', { 'node-name': node }).catch(() => undefined);
  await live.qmp.execute('blockdev-del', { 'node-name': `${node}-f` }).catch(() => undefined);
}

async function writeJournal(volume: string, j: Journal): Promise<void> {
  const path = journalOf(volume);
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, 'w');
  try {
    await fh.writeFile(JSON.stringify(j));
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  await syncDir(dirname(volume));
}

async function readJournal(volume: string): Promise<Journal | undefined> {
  // No journal means no operation in flight; an unreadable one must not pass for that.
  const text = await readFile(journalOf(volume), 'utf8').catch(undefinedIfMissing);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as Journal;
  } catch {
    return undefined;
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function sameFile(a: string, b: string): Promise<boolean> {
  // A missing file is not the same file as anything; callers only ask to skip work already done.
  const [x, y] = await Promise.all([stat(a).catch(() => undefined), stat(b).catch(() => undefined)]);
  return !!x && !!y && x.ino === y.ino && x.dev === y.dev;
}
